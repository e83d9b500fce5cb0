"""Build of adadfq_fast's native libraries.

* ``adadfq_fast._C`` (C++ CPU kernels, ``csrc/cpu/*.cpp``): always built.
* ``adadfq_fast._C_cuda`` (CUDA kernels ``csrc/cuda/*.cu`` + their torch bindings ``csrc/cuda/*.cpp``): built
  only where torch has CUDA support and nvcc is found.

Environment switches:
  ADADFQ_BUILD_CUDA   auto (default) | 0 (skip) | 1 (force; fails loudly without a CUDA toolchain)
  ADADFQ_CUDA_ARCHS   e.g. "9.0" or "8.0;9.0" (default: TORCH_CUDA_ARCH_LIST, else 9.0)
  ADADFQ_CPU_ARCH     value for -march (default: native; use e.g. x86-64-v3 for a portable build, or "none")
  ADADFQ_BUILD_NATIVE 0 installs the pure-Python package only (ops then run on the reference/Triton backends)

Both libraries are plain shared objects loaded with ``torch.ops.load_library``; they only provide
``TORCH_LIBRARY_IMPL`` for the schemas declared in ``adadfq_fast/ops/native.py``.
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ["adadfq_fast", "adadfq_fast.ops", "adadfq_fast.nn", "adadfq_fast.backends", "adadfq_fast.kernels", "adadfq_fast.models", "adadfq_fast.data"]
PACKAGES += ["adadfq_fast.game", "adadfq_fast.config"]
# The published presets are TOML files read at run time (importlib.resources), so they must ship in the wheel.
PACKAGE_DATA = {"adadfq_fast.config": ["presets/*.toml"], "adadfq_fast": ["weights/*.pt", "weights/*.json", "policies/*.json"]}
# Triton kernels live in the top-level kernels/ folder (beside csrc/) and install as adadfq_fast.kernels.
PACKAGE_DIR = {"adadfq_fast.kernels": "kernels"}


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
    return exts, {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()
setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data=PACKAGE_DATA,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if ext_modules else {},
)
