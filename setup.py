"""Build of adadfq_fast's native libraries.

* ``adadfq_fast._C`` (C++ CPU kernels, ``csrc/cpu/*.cpp``): always built.
* ``adadfq_fast._C_cuda`` (CUDA kernels ``csrc/cuda/*.cu`` + their torch bindings ``csrc/cuda/*.cpp``): built
  only where torch has CUDA support and nvcc is found.

Environment switches:
  ADADFQ_BUILD_CUDA   auto (default) | 0 (skip) | 1 (force; fails loudly without a CUDA toolchain)
  ADADFQ_CUDA_ARCHS   e.g. "9.0" or "8.0;9.0" (default: TORCH_CUDA_ARCH_LIST, else 9.0)
  ADADFQ_CPU_ARCH     value for -march (default: native; use e.g. x86-64-v3 for a portable build, or "none")
  ADADFQ_BUILD_NATIVE 0 installs the pure-Python package only (ops then run on the reference/Triton backends)
  ADADFQ_PREBUILT     1 compiles nothing: each library is copied from adadfq_fast/ where an earlier in-place build
                      (`pip install -e .` or `python setup.py build_ext --inplace`) left it, so a wheel built right
                      after an editable install (CI) does not recompile the C++ (minutes on 2 cores). Refused when
                      a library is missing or older than a source file under csrc/.

Both libraries are plain shared objects loaded with ``torch.ops.load_library``; they only provide
``TORCH_LIBRARY_IMPL`` for the schemas declared in ``adadfq_fast/ops/native.py``.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Triton kernels live in the top-level kernels/ folder (beside csrc/) and install as adadfq_fast.kernels; every
# other package is found under adadfq_fast/ (a checkout may hold a kernels symlink there: excluded, mapped below).
PACKAGES = find_packages(ROOT, include=["adadfq_fast", "adadfq_fast.*"], exclude=["adadfq_fast.kernels"])
PACKAGES.append("adadfq_fast.kernels")
PACKAGE_DIR = {"adadfq_fast.kernels": "kernels"}
# Package data (presets, the shipped teacher) is declared once, in pyproject.toml [tool.setuptools.package-data].


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _want_cuda():
    switch = os.environ.get("ADADFQ_BUILD_CUDA", "auto").lower()
    if switch in ("0", "false", "no", "off"):
        return False, "ADADFQ_BUILD_CUDA=0"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    missing = None
    if torch.version.cuda is None:
        missing = "torch has no CUDA support"
    elif CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
        missing = "nvcc was not found (set CUDA_HOME)"
    if missing and switch in ("1", "true", "yes", "on"):
        raise RuntimeError(f"ADADFQ_BUILD_CUDA=1 but {missing}")
    return missing is None, missing


def _prebuilt(base):
    """A build_ext that copies each library from its in-place build instead of compiling (ADADFQ_PREBUILT=1)."""

    class PrebuiltExtension(base):
        def build_extension(self, ext):
            stem = os.path.join(ROOT, *ext.name.split("."))
            found = [p for p in glob.glob(stem + "*.so") if os.path.basename(p).split(".")[0] == ext.name.split(".")[-1]]
            if not found:
                raise RuntimeError(f"ADADFQ_PREBUILT=1 but {os.path.relpath(stem, ROOT)}*.so was not built in place "
                                   "(run `python setup.py build_ext --inplace` or `pip install -e .` first)")
            lib = max(found, key=os.path.getmtime)
            newer = [s for s in ext.sources if os.path.getmtime(os.path.join(ROOT, s)) > os.path.getmtime(lib)]
            newer += [h for h in glob.glob(os.path.join(ROOT, "csrc", "**", "*.h"), recursive=True)
                      if os.path.getmtime(h) > os.path.getmtime(lib)]
            if newer:
                raise RuntimeError(f"ADADFQ_PREBUILT=1 but {os.path.relpath(lib, ROOT)} is older than "
                                   f"{os.path.relpath(newer[0], ROOT)}: rebuild it (or unset ADADFQ_PREBUILT)")
            dest = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(lib, dest)
            print(f"adadfq_fast: {ext.name} copied from {os.path.relpath(lib, ROOT)} (ADADFQ_PREBUILT=1)")

    return PrebuiltExtension


def _extensions():
    if os.environ.get("ADADFQ_BUILD_NATIVE", "1") == "0":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    include = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
    # -ffp-contract=off: no fused multiply-add, so the quantizer matches the float32 reference bit for bit.
    # -fopenmp-simd: honour `#pragma omp simd reduction(...)`, which lets GCC vectorize float reductions
    # without -ffast-math. -fno-math-errno: lets rint/nearbyint vectorize to one rounding instruction.
    # -fopenmp: at::parallel_for is a header template whose OpenMP pragma is compiled into this library; without
    # the flag every kernel ran on one thread whatever torch.set_num_threads said. The library links libgomp.so.1,
    # which resolves to the copy torch already loaded (same soname), so there is one OpenMP runtime.
    cxx = ["-O3", "-std=c++20", "-ffp-contract=off", "-fopenmp", "-fopenmp-simd", "-fno-math-errno"]
    arch = os.environ.get("ADADFQ_CPU_ARCH", "native")
    if arch and arch != "none" and os.uname().machine in ("x86_64", "AMD64"):
        cxx.append(f"-march={arch}")
    exts = [
        CppExtension(
            "adadfq_fast._C",
            _rel(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))),
            include_dirs=include,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]
    build_cuda, why_not = _want_cuda()
    if build_cuda:
        archs = os.environ.get("ADADFQ_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or "9.0"
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        exts.append(
            CUDAExtension(
                "adadfq_fast._C_cuda",
                _rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp"))),
                include_dirs=include,
                extra_compile_args={"cxx": ["-O3", "-std=c++20"], "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
                py_limited_api=True,
            )
        )
    else:
        print(f"adadfq_fast: skipping the CUDA kernels ({why_not})")
    build_ext = BuildExtension.with_options(no_python_abi_suffix=True)
    if os.environ.get("ADADFQ_PREBUILT", "0") == "1":
        build_ext = _prebuilt(build_ext)
    return exts, {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if ext_modules else {},
)
