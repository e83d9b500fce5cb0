"""The CUDA sources build, on any machine with nvcc (no GPU needed).

* Every ``csrc/cuda/*.cu`` compiles alone (``nvcc -std=c++17 -arch=sm_90 -c FILE -I csrc/include``), and again with
  the flags torch's CUDAExtension adds (``__CUDA_NO_HALF_CONVERSIONS__`` and friends), then the objects link with
  every launcher that ``adadfq/cuda_kernels.h`` declares: a declared-but-undefined launcher fails here, not at
  import time on a GPU machine.
* The torch bindings (``csrc/cuda/*.cpp``) pass ``g++ -fsyntax-only`` against the installed torch's headers when
  they ship ``c10/cuda`` (even a CPU-only wheel does; its one generated CUDA header is bypassed).
* Every kernel schema in ``adadfq_fast/ops/native.py`` is registered for the CUDA key by exactly one binding, so a
  renamed op cannot silently go unregistered.

nvcc is slow on small machines, so all compiler runs start together in a thread pool, once per session.
"""
from __future__ import annotations

import ast
import concurrent.futures
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
INCLUDE_DIR = ROOT / "csrc" / "include"
HEADER = INCLUDE_DIR / "adadfq" / "cuda_kernels.h"
CU_FILES = sorted(CUDA_DIR.glob("*.cu"))
BINDINGS = sorted(CUDA_DIR.glob("*.cpp"))

BASE_NVCC = ["-std=c++17", "-arch=sm_90"]
# What torch.utils.cpp_extension adds for .cu files (COMMON_NVCC_FLAGS) plus setup.py's own nvcc flags.
TORCH_NVCC = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
    "-O3",
    "-lineinfo",
    "--compiler-options",
    "-fPIC",
]
TIMEOUT_S = 600


def find_nvcc() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = "/usr/local/cuda/bin/nvcc"
    return default if os.access(default, os.X_OK) else None


NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME)")


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)


def _report(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(map(str, proc.args))}\n{proc.stdout}\n{proc.stderr}"[-8000:]


@functools.lru_cache(maxsize=None)
def cuda_include_dir() -> str | None:
    """Where nvcc takes cuda_runtime_api.h from (asks nvcc itself: it may be a wrapper script on PATH)."""
    if NVCC is None:
        return None
    proc = _run([NVCC, "--dryrun", "-E", "-x", "cu", os.devnull])
    for flag in re.findall(r'-I"?([^"\s]+)', proc.stdout + proc.stderr):
        if os.path.exists(os.path.join(flag, "cuda_runtime_api.h")):
            return flag
    home = os.path.dirname(os.path.dirname(os.path.realpath(NVCC)))
    candidate = os.path.join(home, "include")
    return candidate if os.path.exists(os.path.join(candidate, "cuda_runtime_api.h")) else None


def _declared_launchers() -> list[str]:
    """Names of the functions declared in adadfq/cuda_kernels.h (return type at the start of a line)."""
    text = HEADER.read_text()
    return re.findall(r"^(?:cudaError_t|int64_t|BnPlan)\s+(\w+)\s*\(", text, flags=re.M)


@functools.lru_cache(maxsize=None)
def nvcc_results():
    """Compiles every .cu file in both flag sets (concurrently), then links the plain objects. Returns
    {(file name, variant): CompletedProcess} plus the link under ("<link>", "plain")."""
    tmp = Path(tempfile.mkdtemp(prefix="adadfq_nvcc_"))
    jobs = {}
    for cu in CU_FILES:
        for variant, extra in (("plain", []), ("torch", TORCH_NVCC)):
            obj = tmp / f"{cu.stem}.{variant}.o"
            cmd = [NVCC, *BASE_NVCC, *extra, "-c", str(cu), "-I", str(INCLUDE_DIR), "-o", str(obj)]
            jobs[(cu.name, variant)] = (cmd, obj)
    workers = max(2, os.cpu_count() or 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(_run, cmd) for key, (cmd, _) in jobs.items()}
        results = {key: f.result() for key, f in futures.items()}
    if all(results[(cu.name, "plain")].returncode == 0 for cu in CU_FILES):
        # Take the address of every declared launcher: the link fails if one is declared but never defined.
        main = tmp / "link_check.cpp"
        refs = "\n".join(f"  (void)&adadfq::cuda::{name};" for name in _declared_launchers())
        main.write_text(f'#include "adadfq/cuda_kernels.h"\nint main() {{\n{refs}\n  return 0;\n}}\n')
        objs = [str(obj) for (name, variant), (_, obj) in jobs.items() if variant == "plain"]
        results[("<link>", "plain")] = _run(
            [NVCC, *BASE_NVCC, str(main), *objs, "-I", str(INCLUDE_DIR), "-o", str(tmp / "link_check")]
        )
    return results


def test_sources_exist():
    assert CU_FILES, "no CUDA kernels in csrc/cuda"
    assert BINDINGS, "no torch bindings in csrc/cuda"
    # setup.py compiles csrc/cuda/*.cu and *.cpp into one extension: same stems would give clashing objects.
    assert not {p.stem for p in CU_FILES} & {p.stem for p in BINDINGS}


@pytest.mark.parametrize("path", CU_FILES + [HEADER, CUDA_DIR / "cuda_common.cuh"], ids=lambda p: p.name)
def test_kernel_sources_are_torch_free(path):
    """The .cu files and their headers must compile with nvcc alone: no torch, ATen or c10 includes."""
    includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', path.read_text(), flags=re.M)
    offending = [inc for inc in includes if inc.split("/")[0] in ("torch", "ATen", "c10") or "extension.h" in inc]
    assert not offending, f"{path.name} includes {offending}"


@needs_nvcc
@pytest.mark.parametrize("variant", ["plain", "torch"])
@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_cu_compiles(cu, variant):
    proc = nvcc_results()[(cu, variant)]
    assert proc.returncode == 0, _report(proc)


@needs_nvcc
def test_launchers_link():
    results = nvcc_results()
    if ("<link>", "plain") not in results:
        pytest.fail("a .cu file does not compile (see test_cu_compiles)")
    assert _declared_launchers(), "no launcher found in cuda_kernels.h (declaration style changed?)"
    proc = results[("<link>", "plain")]
    assert proc.returncode == 0, _report(proc)


def _torch_include_paths() -> list[str] | None:
    try:
        from torch.utils import cpp_extension
    except Exception:  # noqa: BLE001 - no torch: nothing to check the bindings against
        return None
    paths = cpp_extension.include_paths()
    if not any(os.path.exists(os.path.join(p, "c10", "cuda", "CUDAStream.h")) for p in paths):
        return None
    return paths


def _syntax_cmd(sources: list[Path], torch_paths: list[str], cuda_inc: str, tmp: Path) -> list[str]:
    unit = tmp / "bindings.cpp"
    unit.write_text("".join(f'#include "{s}"\n' for s in sources))
    # C10_CUDA_NO_CMAKE_CONFIGURE_FILE: a CPU-only wheel lacks the generated c10/cuda/impl/cuda_cmake_macros.h;
    # on CUDA wheels the define is harmless. -w: torch's headers warn under -std=c++17.
    flags = ["-std=c++17", "-fsyntax-only", "-w", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]
    incs = [f"-I{p}" for p in torch_paths] + [f"-I{cuda_inc}", f"-I{INCLUDE_DIR}", f"-I{ROOT / 'csrc'}"]
    return [shutil.which("g++") or "c++", *flags, *incs, str(unit)]


def test_bindings_syntax():
    """g++ -fsyntax-only on the bindings against the installed torch's headers and the CUDA headers."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no host C++ compiler")
    torch_paths = _torch_include_paths()
    if torch_paths is None:
        pytest.skip("the installed torch ships no c10/cuda headers")
    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found")
    tmp = Path(tempfile.mkdtemp(prefix="adadfq_bind_"))
    # Fast path: all bindings in one translation unit (torch's headers are parsed once).
    proc = _run(_syntax_cmd(BINDINGS, torch_paths, cuda_inc, tmp))
    if proc.returncode == 0:
        return
    # Something failed (or two files' private helpers clash in the combined unit): judge each file alone.
    failures = []
    for src in BINDINGS:
        single = _run(_syntax_cmd([src], torch_paths, cuda_inc, Path(tempfile.mkdtemp(prefix="adadfq_bind_"))))
        if single.returncode != 0:
            failures.append(_report(single))
    assert not failures, "\n\n".join(failures)


def _native_constant(name: str) -> set[str]:
    """The keys or items of the constant ``name`` in adadfq_fast/ops/native.py, read without importing the package."""
    tree = ast.parse((ROOT / "adadfq_fast" / "ops" / "native.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return set(ast.literal_eval(node.value))
    raise AssertionError(f"{name} not found in adadfq_fast/ops/native.py")



def _cuda_impls() -> list[tuple[str, str]]:
    """(op name, file) for every m.impl inside a TORCH_LIBRARY_IMPL(adadfq_native, CUDA, ...) block."""
    found = []
    for src in BINDINGS:
        text = re.sub(r"//[^\n]*", "", src.read_text())
        for head in re.finditer(r"TORCH_LIBRARY_IMPL\s*\(\s*(\w+)\s*,\s*(\w+)\s*,\s*\w+\s*\)\s*\{", text):
            namespace, key = head.groups()
            assert (namespace, key) == ("adadfq_native", "CUDA"), f"{src.name}: unexpected {namespace}/{key} block"
            depth, end = 1, head.end()
            while depth and end < len(text):  # the block's body, up to its matching brace
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            body = text[head.end() : end]
            found += [(name, src.name) for name in re.findall(r'\.impl\s*\(\s*"([^"]+)"', body)]
    return found


def test_every_schema_has_one_cuda_binding():
    schemas = _native_constant("SCHEMAS")
    impls = _cuda_impls()
    names = [name for name, _ in impls]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"registered more than once: {duplicates} ({impls})"
    assert set(names) - schemas == set(), f"bindings for ops that have no schema: {sorted(set(names) - schemas)}"
    not_in_cuda = _native_constant("NOT_IN_CUDA_LIBRARY")
    assert not_in_cuda <= schemas and not not_in_cuda & set(names), f"NOT_IN_CUDA_LIBRARY is stale: {not_in_cuda}"
    missing = schemas - not_in_cuda - set(names)
    assert missing == set(), f"schemas without a CUDA binding: {sorted(missing)}"


# ----------------------------------------------------------------------------------------------------------
# The kernels, run on the CPU. csrc/cuda/emulation/emulate.h emulates blocks, warps, barriers and shared memory,
# so g++ can build the .cu files as host code (launch syntax rewritten below) and the tests can compare their
# results with adadfq_fast.reference: the quantizers bit for bit, the reductions to float32 rounding. This checks
# the indexing, layouts, launch plans, reductions and NaN handling of the CUDA code on machines without a GPU;
# the GPU itself is checked by tests/test_gpu_backends.py.
# ----------------------------------------------------------------------------------------------------------
EMULATION_DIR = CUDA_DIR / "emulation"
LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^;{}()]*?>)?)\s*<<<(.*?)>>>\s*\(\s*", re.S)


@functools.lru_cache(maxsize=None)
def emulated():
    """(ctypes library, None) with every launcher built for the emulator, or (None, why not)."""
    import sys

    if not sys.platform.startswith("linux"):
        return None, "the emulator uses ucontext fibers (Linux)"
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None, "no host C++ compiler"
    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        return None, "CUDA headers (cuda_fp16.h, cuda_runtime.h) not found"
    import ctypes

    tmp = Path(tempfile.mkdtemp(prefix="adadfq_emu_"))
    flags = [
        "-std=c++17", "-O1", "-fPIC", "-ffp-contract=off", "-Wno-attributes",
        "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-include", str(EMULATION_DIR / "emulate.h"),
        f"-I{CUDA_DIR}", f"-I{INCLUDE_DIR}", f"-I{cuda_inc}",
    ]  # fmt: skip
    jobs = []
    for cu in CU_FILES:
        text, launches = LAUNCH.subn(lambda m: f"::emu::launch(::emu::Config({m.group(2)}), {m.group(1)}, ", cu.read_text())
        assert "<<<" not in text, f"{cu.name}: a kernel launch the emulation test cannot rewrite"
        src = tmp / f"{cu.stem}.cpp"
        src.write_text(f'#line 1 "{cu}"\n{text}')
        jobs.append([cxx, *flags, "-c", str(src), "-o", str(src.with_suffix(".o"))])
    jobs.append([cxx, *flags, "-c", str(EMULATION_DIR / "shim.cpp"), "-o", str(tmp / "shim.o")])
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for proc in pool.map(_run, jobs):
            assert proc.returncode == 0, _report(proc)
    lib_path = tmp / "libadadfq_emu.so"
    proc = _run([cxx, "-shared", *(str(p) for p in sorted(tmp.glob("*.o"))), "-o", str(lib_path)])
    assert proc.returncode == 0, _report(proc)
    lib = ctypes.CDLL(str(lib_path))
    P, I64, I, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    PP = ctypes.POINTER(ctypes.c_void_p)
    PI, PI64 = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int64)
    signatures = {
        "emu_fake_quant": [P, P, I, I64, I64, I64, P, P, I],
        "emu_fake_quant_weight": [P, P, I, I64, I64, I64, I],
        "emu_fake_quant_act": [P, P, I, I64, P, P, I, D, I],
        "emu_bn_total_channels": [I, PP, PP, PP, PI, PI64, PI64, PI64],
        "emu_bn_stat_loss": [I, PP, PP, PP, PI, PI64, PI64, PI64, P, P],
        "emu_bn_stat_loss_backward": [I, PP, PP, PP, PP, PI, PI64, PI64, PI64, P, P],
        "emu_generator_loss": [P, P, I, I, P, I64, I64, D, D, D, D, P, P, P],
        "emu_generator_loss_backward": [P, P, P, P, I, I, P, I64, I64, P, D, D, D, D, P, P],
        "emu_student_loss": [P, P, I, I, I64, I64, D, P, P],
        "emu_student_loss_backward": [P, P, P, I, I, I64, I64, P, D, P],
        "emu_int_conv2d": [P, PI64, P, PI64, P, P, P, P, I, PI64, P, PI64, PI64, PI, I, I, D, D, D],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_int64 if name == "emu_bn_total_channels" else ctypes.c_int
    return lib, None


@pytest.fixture(scope="module")
def emu():
    lib, why_not = emulated()
    if lib is None:
        pytest.skip(why_not)
    return lib


def _dt(t) -> int:
    import torch

    return {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[t.dtype]


def _ptr(t):
    return t.data_ptr() if t is not None else None


def _inner(x, axis: int, channels: int) -> int:
    return x.stride(axis) if channels > 1 else x.numel()


def _exact(actual, expected):
    import torch

    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _close(actual, expected, **tol):
    import torch

    tol = tol or dict(rtol=2e-5, atol=1e-6)
    if actual.dtype == torch.float16:
        tol = dict(rtol=2e-3, atol=1e-5)
    elif actual.dtype == torch.bfloat16:
        tol = dict(rtol=1.6e-2, atol=1e-5)
    torch.testing.assert_close(actual.float(), expected.float(), equal_nan=True, **tol)


FLOAT_DTYPE_NAMES = ["float32", "float16", "bfloat16"]


@pytest.mark.parametrize("dtype", FLOAT_DTYPE_NAMES)
def test_emulated_fake_quant(emu, dtype):
    import torch
    from adadfq_fast import reference as ref

    dtype = getattr(torch, dtype)
    cases = [
        ((2, 3, 5, 7), -1, False), ((2, 3, 5, 7), 1, False), ((2, 3, 5, 7), 1, True), ((4, 6), 0, False),
        ((3, 1, 4), 1, False), ((5, 300), 1, False), ((2, 8, 3, 3), 0, True), ((3, 2000), 0, False),
    ]  # fmt: skip
    for shape, axis, channels_last in cases:
        for bits in (2, 4, 8):
            x = (torch.randn(shape) * 3).to(dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            channels = 1 if axis < 0 else shape[axis]
            lo, hi = -torch.rand(channels) * 3, torch.rand(channels) * 3
            if channels > 1 and bits == 2:
                lo[0] = float("nan")  # a NaN range poisons its own channel only
            out = torch.empty_like(x)
            rc = emu.emu_fake_quant(_ptr(x), _ptr(out), _dt(x), x.numel(), _inner(x, max(axis, 0), channels), channels,
                                    _ptr(lo), _ptr(hi), bits)  # fmt: skip
            assert rc == 0
            want = ref.fake_quant_forward(x, bits, lo if axis >= 0 else lo[0], hi if axis >= 0 else hi[0], axis)
            _exact(out, want)
            assert out.stride() == x.stride()


@pytest.mark.parametrize("dtype", FLOAT_DTYPE_NAMES)
def test_emulated_fake_quant_weight(emu, dtype):
    import torch
    from adadfq_fast import reference as ref

    dtype = getattr(torch, dtype)
    weights = [
        torch.randn(16, 8, 3, 3), torch.randn(10, 64), torch.randn(64, 10).t(), torch.randn(7), torch.randn(1, 50),
        torch.randn(4, 1000), torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last), torch.randn(5, 1, 3, 3),
    ]  # fmt: skip
    weights[1][3, 5] = float("nan")
    for w in weights:
        w = w.to(dtype)
        for bits in (3, 8):
            out = torch.empty_like(w)
            channels = w.shape[0]
            rc = emu.emu_fake_quant_weight(_ptr(w), _ptr(out), _dt(w), w.numel(), _inner(w, 0, channels), channels, bits)
            assert rc == 0
            _exact(out, ref.fake_quant_weight_forward(w, bits))


@pytest.mark.parametrize("dtype", FLOAT_DTYPE_NAMES)
def test_emulated_fake_quant_act(emu, dtype):
    import torch
    from adadfq_fast import reference as ref

    dtype = getattr(torch, dtype)
    for numel in (1, 5, 1000, 5000, 300_000):  # 300K: many block partials for the range kernel
        for update in (True, False):
            x = (torch.randn(numel) * 2 + 0.5).to(dtype)
            if numel == 5000:
                x[77] = float("nan")
            state = torch.tensor([0.1, 0.9, 0.9]) if update else torch.tensor([-0.3, 1.7, 0.81])
            new_state = torch.full((3,), 999.0)
            out = torch.empty_like(x)
            rc = emu.emu_fake_quant_act(_ptr(x), _ptr(out), _dt(x), numel, _ptr(state), _ptr(new_state), 4, 0.9,
                                        int(update))  # fmt: skip
            assert rc == 0
            want, want_state = ref.fake_quant_act_forward(x, 4, state, 0.9, update)
            _exact(out, want)
            if update:
                _exact(new_state, want_state)


def _bn_call(emu, feats, rms, rvs):
    import ctypes

    import torch

    n = len(feats)

    def arr(ctype, values):
        return (ctype * len(values))(*values)

    xs = arr(ctypes.c_void_p, [f.data_ptr() for f in feats])
    rmp = arr(ctypes.c_void_p, [r.data_ptr() for r in rms])
    rvp = arr(ctypes.c_void_p, [r.data_ptr() for r in rvs])
    dts = arr(ctypes.c_int, [_dt(t) for f, r, v in zip(feats, rms, rvs) for t in (f, r, v)])
    numel = arr(ctypes.c_int64, [f.numel() for f in feats])
    inner = arr(ctypes.c_int64, [_inner(f, 1, f.shape[1]) for f in feats])
    channels = arr(ctypes.c_int64, [f.shape[1] for f in feats])
    common = (xs, rmp, rvp)
    layout = (dts, numel, inner, channels)
    total = emu.emu_bn_total_channels(n, *common, *layout)
    loss, stats = torch.full((), 7.0), torch.full((2, total), 7.0)
    assert emu.emu_bn_stat_loss(n, *common, *layout, _ptr(loss), _ptr(stats)) == 0
    grad = torch.tensor(1.7)
    grads = [torch.empty_like(f) for f in feats]
    gp = arr(ctypes.c_void_p, [g.data_ptr() for g in grads])
    assert emu.emu_bn_stat_loss_backward(n, *common, gp, *layout, _ptr(grad), _ptr(stats)) == 0
    return loss, stats, grad, grads


def _bn_inputs(case: str):
    """(feats, running_means, running_vars) of one L_BNS case, on the CPU."""
    import torch

    if case == "mixed_layouts_and_dtypes":
        feats = [
            torch.randn(4, 16, 8, 8) * 2 + 1,
            torch.randn(4, 32, 4, 4).to(memory_format=torch.channels_last),
            torch.randn(6, 40),
            torch.randn(2, 3, 5).half(),
            torch.randn(3, 1, 4, 4).bfloat16(),
        ]
    elif case == "split_channels":  # 80K elements per channel, far from zero mean; and a row-major split
        feats = [torch.randn(2, 3, 200, 200) + 100, torch.randn(64, 70, 3, 3).to(memory_format=torch.channels_last) - 3]
    elif case == "more_layers_than_one_table_chunk":
        feats = [torch.randn(2, 2 + (i % 5), 3, 3) for i in range(30)]
    elif case == "empty_batch":
        feats = [torch.randn(0, 4, 3, 3), torch.randn(2, 4)]
    else:
        raise ValueError(case)
    rms = [torch.randn(f.shape[1]) for f in feats]
    rvs = [torch.rand(f.shape[1]) + 0.5 for f in feats]
    if case == "mixed_layouts_and_dtypes":
        rms[1], rvs[2] = rms[1].half(), rvs[2].bfloat16()
    return feats, rms, rvs


@pytest.mark.parametrize("case", ["mixed_layouts_and_dtypes", "split_channels", "more_layers_than_one_table_chunk",
                                  "empty_batch"])  # fmt: skip
def test_emulated_bn_stat_loss(emu, case):
    import warnings

    from adadfq_fast import reference as ref

    feats, rms, rvs = _bn_inputs(case)
    loss, stats, grad, grads = _bn_call(emu, feats, rms, rvs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # var() of an empty batch warns
        want_loss, want_stats = ref.bn_stat_loss_forward(feats, rms, rvs)
    tol = dict(rtol=1e-4, atol=1e-5) if case == "split_channels" else {}
    _close(loss, want_loss, **tol)
    _close(stats, want_stats, **tol)
    want_grads = ref.bn_stat_loss_backward(grad, feats, rms, rvs, stats)
    for g, w, f in zip(grads, want_grads, feats):
        assert g.stride() == f.stride()
        _close(g, w)


def _logits(torch, b, c, t_dtype, s_dtype, scale=3.0):
    return (torch.randn(b, c) * scale).to(t_dtype), (torch.randn(b, c) * scale).to(s_dtype)


# (16, 10) .. (3, 1000): one block does rows and batch; (200, 10), (40, 2000): row kernel + finishing kernel.
LOSS_SHAPES = [(16, 10), (16, 100), (3, 1000), (1, 5), (200, 10), (40, 2000)]


@pytest.mark.parametrize("batch,classes,dtypes", [(*s, ("float32", "float32")) for s in LOSS_SHAPES]
                         + [(16, 10, ("float16", "bfloat16")), (8, 10, "tie")])  # fmt: skip
def test_emulated_generator_loss(emu, batch, classes, dtypes):
    import torch
    from adadfq_fast import reference as ref

    t_dtype, s_dtype = (torch.float32, torch.float32) if dtypes == "tie" else (getattr(torch, d) for d in dtypes)
    t, s = _logits(torch, batch, classes, t_dtype, s_dtype)
    if dtypes == "tie":  # two identical confident rows share the batch minimum of H
        t[0], s[0] = 0.0, 0.0
        t[0, 3] = 8.0
        t[1], s[1] = t[0], s[0]
    y = torch.randint(0, classes, (batch,))
    hyper = (0.1, 0.8, 0.2, 0.1)
    margin, bal, rows = torch.full((), 9.0), torch.full((), 9.0), torch.full((3, batch), 9.0)
    assert emu.emu_generator_loss(_ptr(t), _ptr(s), _dt(t), _dt(s), _ptr(y), batch, classes, *hyper,
                                  _ptr(margin), _ptr(bal), _ptr(rows)) == 0  # fmt: skip
    want_margin, want_bal, want_rows = ref.generator_loss_forward(t, s, y, *hyper)
    _close(margin, want_margin)
    _close(bal, want_bal)
    _close(rows, want_rows, rtol=2e-5, atol=2e-5)
    gm, gb = torch.tensor(1.3), torch.tensor(-0.7)
    grad_t, grad_s = torch.empty_like(t), torch.empty_like(s)
    assert emu.emu_generator_loss_backward(_ptr(gm), _ptr(gb), _ptr(t), _ptr(s), _dt(t), _dt(s), _ptr(y), batch,
                                           classes, _ptr(want_rows), *hyper, _ptr(grad_t), _ptr(grad_s)) == 0  # fmt: skip
    want_t, want_s = ref.generator_loss_backward(gm, gb, t, s, y, want_rows, *hyper)
    _close(grad_t, want_t)
    _close(grad_s, want_s)


@pytest.mark.parametrize("batch,classes,dtypes", [(*s, ("float32", "float32")) for s in LOSS_SHAPES]
                         + [(16, 10, ("bfloat16", "float16"))])  # fmt: skip
@pytest.mark.parametrize("T", [20.0, 5.0])
def test_emulated_student_loss(emu, batch, classes, dtypes, T):
    import torch
    from adadfq_fast import reference as ref

    t, s = _logits(torch, batch, classes, *(getattr(torch, d) for d in dtypes), scale=5.0)
    loss, rows = torch.full((), 9.0), torch.full((2, batch), 9.0)
    assert emu.emu_student_loss(_ptr(t), _ptr(s), _dt(t), _dt(s), batch, classes, T, _ptr(loss), _ptr(rows)) == 0
    want_loss, want_rows = ref.student_loss_forward(t, s, T)
    _close(loss, want_loss)
    _close(rows, want_rows, rtol=2e-5, atol=2e-5)
    grad = torch.tensor(0.9)
    grad_s = torch.empty_like(s)
    assert emu.emu_student_loss_backward(_ptr(grad), _ptr(t), _ptr(s), _dt(t), _dt(s), batch, classes,
                                         _ptr(want_rows), T, _ptr(grad_s)) == 0  # fmt: skip
    _close(grad_s, ref.student_loss_backward(grad, t, s, want_rows, T))


# ----------------------------------------------------------------------------------------------------------
# int_conv2d (integer inference): bit-exact against reference.int_conv2d_forward, through both CUDA kernels (the
# dp4a implicit GEMM and the direct kernel for few channels per group), every layout and epilogue option.
# ----------------------------------------------------------------------------------------------------------
INT_CONV_CASES = [
    # (n, c, h, w, o, k, stride, padding, dilation, groups)
    (2, 16, 9, 9, 16, 3, 1, 1, 1, 1),     # GEMM, one K chunk of 32 with a channel tail
    (1, 72, 7, 6, 80, 3, 2, 1, 1, 1),     # GEMM: 3 K chunks, 2 output-channel tiles with a tail, stride 2
    (2, 40, 9, 9, 40, 1, 1, 0, 1, 1),     # 1x1, 32-bit word loads in channels_last, a partial second chunk
    (1, 18, 12, 12, 22, 7, 2, 3, 1, 2),   # 7x7 padding 3, 9 channels per group (unaligned words, groups)
    (2, 24, 8, 8, 24, 3, 1, 2, 2, 3),     # dilation 2, groups with 8 channels: direct kernel
    (2, 12, 7, 7, 24, 3, 2, 1, 1, 12),    # depthwise with channel multiplier 2: direct kernel
    (1, 5, 7, 8, 7, 2, 1, 0, 1, 1),       # odd everything: direct kernel
]


def _int_conv2d_emulated(emu, x, q, z, stride, padding, dilation, groups, mult, bias, residual, residual_scale, relu,
                         out_bits, out_scale, out_zero):
    import ctypes

    import torch
    from adadfq_fast import reference as ref

    n, c, h, w = x.shape
    o, cg, kh, kw = q.shape
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    fmt = torch.channels_last if ref.int_conv2d_output_channels_last(x) else torch.contiguous_format
    out = torch.full((n, o, ho, wo), 77, dtype=torch.uint8 if out_bits else torch.float32).contiguous(memory_format=fmt)

    def i64(values):
        return (ctypes.c_int64 * len(values))(*values)

    kind = 0 if residual is None else (2 if residual.dtype == torch.uint8 else 1)
    rc = emu.emu_int_conv2d(
        _ptr(x), i64(x.stride()), _ptr(q), i64(q.stride()), _ptr(z), _ptr(mult), _ptr(bias), _ptr(residual), kind,
        i64(residual.stride() if residual is not None else (0, 0, 0, 0)), _ptr(out), i64(out.stride()),
        i64((n, c, h, w, o, kh, kw, ho, wo)), (ctypes.c_int * 7)(stride, stride, padding, padding, dilation, dilation,
                                                                groups),
        int(relu), out_bits, residual_scale, out_scale, out_zero,
    )  # fmt: skip
    assert rc == 0
    return out


@pytest.mark.parametrize("case", INT_CONV_CASES, ids=lambda c: "n{}c{}h{}w{}o{}k{}s{}p{}d{}g{}".format(*c))
def test_emulated_int_conv2d(emu, case):
    import torch
    from adadfq_fast import reference as ref

    n, c, h, w, o, k, stride, padding, dilation, groups = case
    x = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)
    q = torch.randint(-128, 128, (o, c // groups, k, k), dtype=torch.int8)
    q.view(-1)[0], q.view(-1)[-1] = -128, 127
    z = torch.randint(-127, 129, (o,), dtype=torch.int32)
    mult, bias = torch.rand(o) * 0.02 + 1e-3, torch.randn(o)
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    res_float = torch.randn(n, o, ho, wo) * 2
    res_codes = torch.randint(0, 256, (n, o, ho, wo), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    q_cl = q.contiguous(memory_format=torch.channels_last)  # what the binding passes (aligned 32-bit loads)
    variants = [
        (x, q, None, False, 0, 1.0, 0.0),
        (x.contiguous(memory_format=torch.channels_last), q_cl, res_float, True, 8, 20.0, 128.0),
        (x.contiguous(memory_format=torch.channels_last), q_cl, res_codes, False, 4, 5.5, 8.0),
        (x, q_cl, res_codes, True, 0, 1.0, 0.0),
    ]
    for xv, qv, res, relu, out_bits, out_scale, out_zero in variants:
        args = (xv, qv, z, stride, padding, dilation, groups, mult, bias, res, 3.7, relu, out_bits, out_scale, out_zero)
        got = _int_conv2d_emulated(emu, *args)
        want = ref.int_conv2d_forward(xv, qv, z, [stride] * 2, [padding] * 2, [dilation] * 2, groups, mult, bias, res,
                                      3.7, relu, out_bits, out_scale, out_zero)
        assert got.dtype == want.dtype and got.stride() == want.stride()
        assert torch.equal(got, want), (got.float() - want.float()).abs().max()


def test_emulated_int_conv2d_strided_views_and_extremes(emu):
    """Non-contiguous x, weight and residual read through their strides; 255 codes against -128/127 weights."""
    import torch
    from adadfq_fast import reference as ref

    x = torch.randint(0, 256, (2, 36, 8, 10), dtype=torch.uint8)
    x[0] = 255
    xs = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0][:, :, :, 1:]
    q = torch.randint(-128, 128, (20, 36, 3, 3), dtype=torch.int8)
    q[:4] = -128
    q[4:8] = 127
    qs = torch.stack([q, torch.zeros_like(q)], dim=-1)[..., 0]
    z = torch.tensor([128, -127] * 10, dtype=torch.int32)
    mult, bias = torch.rand(20) * 1e-4, torch.randn(20)
    res = torch.randn(2, 20, 8, 9)
    rs = torch.stack([res, res], dim=-1)[..., 1]
    assert not xs.is_contiguous() and not qs.is_contiguous() and not rs.is_contiguous()
    got = _int_conv2d_emulated(emu, xs, qs, z, 1, 1, 1, 1, mult, bias, rs, 1.0, True, 0, 1.0, 0.0)
    want = ref.int_conv2d_forward(xs, qs, z, [1, 1], [1, 1], [1, 1], 1, mult, bias, rs, 1.0, True, 0, 1.0, 0.0)
    assert torch.equal(got, want)
