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


def _schema_names() -> set[str]:
    """Keys of SCHEMAS in adadfq_fast/ops/native.py, read without importing the package."""
    tree = ast.parse((ROOT / "adadfq_fast" / "ops" / "native.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "SCHEMAS" for t in targets):
                return set(ast.literal_eval(node.value))
    raise AssertionError("SCHEMAS not found in adadfq_fast/ops/native.py")


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
    schemas = _schema_names()
    impls = _cuda_impls()
    names = [name for name, _ in impls]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"registered more than once: {duplicates} ({impls})"
    assert set(names) - schemas == set(), f"bindings for ops that have no schema: {sorted(set(names) - schemas)}"
    assert schemas - set(names) == set(), f"schemas without a CUDA binding: {sorted(schemas - set(names))}"
