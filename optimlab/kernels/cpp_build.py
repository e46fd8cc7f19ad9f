"""Building and loading the "cpp" backend's C++ extension (``csrc/``).

``pip install`` compiles the extension for the installing machine into the package
(``optimlab/kernels/_prebuilt/``, by ``setup.py``: ``python -m optimlab.kernels --into``),
against the torch already installed in the environment being installed into (pip's
isolated build environment itself has no torch, and pip never resolves one for it). A
process finds that build by the same hash as below (sources, flags, torch's and Python's
versions, CPU capability) and imports it: the first step compiles nothing. Where there is
no such build (torch installed after optimlab, upgraded since, another CPU, sources edited
in a checkout, ``OPTIMLAB_NO_PREBUILD=1`` at install), the extension is compiled on first
use with ``torch.utils.cpp_extension.load`` into
``$OPTIMLAB_CACHE_DIR`` (default: ``$TORCH_EXTENSIONS_DIR/optimlab``, else
``$XDG_CACHE_HOME/optimlab`` or ``~/.cache/optimlab``), in a folder named after a hash of
the sources, the flags, torch's and Python's versions and the CPU capability, so later
processes just import it. The instruction set is the highest level torch's CPUID check
finds (AVX512 / AVX2 / DEFAULT; ``OPTIMLAB_CPU_ISA`` overrides, see ``capability``), never
``-march=native``; a cache shared by different machines keeps one build per instruction
set. ``python -m optimlab.kernels`` builds ahead of time.

A build says on stderr that it starts (what, why, about how long) and when it ends.
Ctrl-C stops it at once (no other instruction set is tried then). A ``lock`` file that a
killed build left in the folder (torch would wait for it forever) is removed once older
than ``$OPTIMLAB_BUILD_LOCK_TIMEOUT`` seconds (default 600); a younger one means another
process is building, and this one waits for it. When every instruction set fails, the
failure is remembered (a ``FAILED`` file in the folder): later processes report the
backend unavailable with that reason instead of building again, until
``python -m optimlab.kernels --rebuild``.

If no compiler is found or the build fails, the backend reports itself unavailable with
the reason: the default falls back to foreach with one warning, and an explicit
``fused=True`` or ``OPTIMLAB_BACKEND=cpp`` raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from .. import _dispatch
from .._compat import assume_constant_result

__all__ = ["availability", "build_directory", "cache_root", "capability", "csrc_dir", "load"]

_PREBUILT = Path(__file__).resolve().parent / "_prebuilt"  # the install-time build (setup.py)
_CSRC_CANDIDATES = (
    Path(__file__).resolve().parent / "csrc",  # shipped inside the package
    Path(__file__).resolve().parents[2] / "csrc",  # source checkout / editable install
)
_SOURCES = (
    "bindings.cpp", "fused_apply.cpp", "adam.cpp", "sgd.cpp", "adagrad.cpp", "adadelta.cpp",
    "adamax.cpp", "asgd.cpp", "nadam.cpp", "radam.cpp", "rmsprop.cpp", "rprop.cpp", "adafactor.cpp",
    "low_precision.cpp",
)
_HEADERS = ("optim_math.h", "fused_apply.h", "kernels.h")

# Instruction-set flags per torch CPU capability (what ATen compiles its own kernels with),
# with the macros that select at::vec's matching Vectorized<T>.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "DEFAULT": [],
}
_FALLBACK_ORDER = ("AVX512", "AVX2", "DEFAULT")

_lock = threading.Lock()
_module: ModuleType | None = None
_unavailable_reason: str | None = None
_checked = False
_announced = False  # the "compiling ..." message is printed once per process

_STAMP = "BUILT"  # written once a build has been loaded: the library is complete
_FAILED = "FAILED"  # in the best instruction set's folder: why every instruction set failed
_BATON = "lock"  # cpp_extension's FileBaton: exists while a process builds in the folder
_LOCK_TIMEOUT_VAR = "OPTIMLAB_BUILD_LOCK_TIMEOUT"
_LOCK_POLL_S = 1.0


def csrc_dir() -> Path | None:
    for d in _CSRC_CANDIDATES:
        if all((d / f).is_file() for f in _SOURCES + _HEADERS):
            return d
    return None


def capability() -> str:
    """The instruction set to build for: the highest level of ``_ISA_FLAGS`` this CPU runs,
    by torch's CPUID check (which honours ``ATEN_CPU_CAPABILITY``); ``OPTIMLAB_CPU_ISA``
    (AVX512, AVX2 or DEFAULT) overrides it. (torch runs most of its own elementwise
    kernels as AVX2 code on AVX-512 machines; ``benchmarks/bench_cpu_isa.py`` measures
    both builds of these kernels: on an AMD EPYC they were within noise of each other
    except Rprop, 10-20% faster as AVX2 (benchmarks/results/cpu-epyc-2c-isa.md).)
    """
    machine = _machine_level()
    forced = os.environ.get("OPTIMLAB_CPU_ISA", "").upper()
    if forced:
        if forced not in _ISA_FLAGS:
            raise ValueError(f"OPTIMLAB_CPU_ISA={forced!r}: expected one of {', '.join(_ISA_FLAGS)}")
        if _FALLBACK_ORDER.index(forced) < _FALLBACK_ORDER.index(machine):
            raise ValueError(f"OPTIMLAB_CPU_ISA={forced}: this CPU runs {machine} at most")
        return forced
    return machine


def _machine_level() -> str:
    """The highest instruction set of _ISA_FLAGS this CPU runs, by torch's CPUID check."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return "DEFAULT"
    cap = torch.backends.cpu.get_cpu_capability().upper().replace(" ", "")
    return cap if cap in _ISA_FLAGS else "DEFAULT"


def _flags(cap: str) -> tuple[list[str], list[str]]:
    # -ffp-contract=off: the kernels' fused multiply-adds are the explicit ones of
    # csrc/optim_math.h (where torch's ops have them), not the compiler's choice.
    cflags = ["-O3", "-ffp-contract=off", *_ISA_FLAGS[cap]]
    ldflags: list[str] = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP: the kernels join torch's own libgomp thread pool.
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def cache_root() -> Path:
    if os.environ.get("OPTIMLAB_CACHE_DIR"):
        return Path(os.environ["OPTIMLAB_CACHE_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "optimlab"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "optimlab"


def _module_name(cap: str) -> str:
    return f"optimlab_cpu_{cap.lower()}"


def build_directory(cap: str | None = None, src: Path | None = None, root: Path | None = None) -> Path:
    """Where the build of ``src`` for ``cap`` lives under ``root`` (default: ``cache_root()``)."""
    cap = cap or capability()
    src = src or csrc_dir()
    digest = hashlib.sha256()
    for f in _SOURCES + _HEADERS:
        digest.update(f.encode() + b"\0" + (src / f).read_bytes() if src else f.encode())
    digest.update(repr((_flags(cap), torch.__version__, sys.version_info[:2], platform.machine())).encode())
    return (root or cache_root()) / f"cpu-{cap.lower()}-{digest.hexdigest()[:16]}"


def _candidates(cap: str) -> tuple[str, ...]:
    """``cap`` and the lower instruction sets: an older compiler may not know the best one's flags."""
    return _FALLBACK_ORDER[_FALLBACK_ORDER.index(cap):]


def _say(message: str) -> None:
    """A progress message on stderr (not a warning: warnings can be filtered out)."""
    print(f"optimlab: {message}", file=sys.stderr, flush=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # a concurrent reader sees all of it or nothing


def _import_built(name: str, directory: Path) -> ModuleType | None:
    """Import an already built extension without running ninja (fast path of later processes)."""
    stamp = directory / _STAMP
    if not stamp.is_file():
        return None
    lib = directory / stamp.read_text().strip()
    if not lib.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, lib)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None  # rebuilt below
    return module


def _build(cap: str, src: Path, verbose: bool = False, root: Path | None = None) -> ModuleType:
    name = _module_name(cap)
    directory = build_directory(cap, src, root)
    module = _import_built(name, directory)
    if module is not None:
        return module
    directory.mkdir(parents=True, exist_ok=True)
    if _wait_for_lock(directory) and (module := _import_built(name, directory)) is not None:
        return module  # built by the process we waited for
    with _announce(cap, directory):
        module = _compile(name, cap, src, directory, verbose)
    if Path(module.__file__).parent == directory and Path(module.__file__).stem == name:
        _write_atomic(directory / _STAMP, Path(module.__file__).name)
    return module


def _compile(name: str, cap: str, src: Path, directory: Path, verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    cflags, ldflags = _flags(cap)
    # cpp_extension serialises concurrent builds of one directory with a lock file (_BATON)
    return cpp_extension.load(
        name=name,
        sources=[str(src / f) for f in _SOURCES],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        extra_include_paths=[str(src)],
        build_directory=str(directory),
        verbose=verbose,
    )


@contextlib.contextmanager
def _announce(cap: str, directory: Path):
    """Say on stderr that a build starts (the first one of the process: what, why, about how
    long, how to avoid the wait), then how it ended and how long it took."""
    global _announced
    if _announced:
        _say(f"compiling the C++ CPU kernels for {cap} instead")
    else:
        _announced = True
        _say(f"compiling the C++ CPU kernels ({cap}) into {directory}: no build of these sources "
             "for this torch, Python and CPU is cached yet. This takes about 1-2 minutes, once (later "
             "processes load the cached build). To build ahead of time: python -m optimlab.kernels")
    t0, status = time.perf_counter(), "build interrupted"
    try:
        yield
        status = "built"
    except Exception as e:
        status = "build interrupted" if _interrupted(e) else "build failed"
        raise
    finally:
        _say(f"C++ CPU kernels ({cap}): {status} after {time.perf_counter() - t0:.0f} s")


def _interrupted(error: BaseException | None) -> bool:
    """Whether a build stopped because of Ctrl-C. When ninja, not this process, got the
    SIGINT, cpp_extension reports ninja's exit as a RuntimeError from a CalledProcessError."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt) or "interrupted by user" in str(error):  # ninja's words
            return True
        if isinstance(error, subprocess.CalledProcessError) and error.returncode in (
                -signal.SIGINT, 128 + signal.SIGINT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _lock_timeout() -> float:
    value = os.environ.get(_LOCK_TIMEOUT_VAR, "600")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{_LOCK_TIMEOUT_VAR}={value!r}: expected a number of seconds") from None


def _age(path: Path) -> float | None:
    """Seconds since ``path`` was written; None if it does not exist."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _wait_for_lock(directory: Path) -> bool:
    """Wait while another process builds in ``directory``: its lock file is younger than the
    timeout. An older one was left by a killed build (cpp_extension would wait for it
    forever): removed. True if there was a lock."""
    lock, timeout = directory / _BATON, _lock_timeout()
    age = _age(lock)
    if age is None:
        return False
    if age < timeout:
        _say(f"another process is building the C++ CPU kernels in {directory} (its lock file is "
             f"{age:.0f} s old): waiting for it, at most {timeout - age:.0f} s ({_LOCK_TIMEOUT_VAR})")
        while age is not None and age < timeout:  # (mtime re-read: a new builder restarts the clock)
            time.sleep(min(_LOCK_POLL_S, timeout - age))
            age = _age(lock)
        if age is None:
            return True  # the other build ended
    _say(f"removing the lock file {lock}, {age:.0f} s old ({_LOCK_TIMEOUT_VAR}={timeout:g}): "
         "left by a build that was killed")
    lock.unlink(missing_ok=True)
    return True


def load(verbose: bool = False) -> ModuleType:
    """The compiled extension, building it on first use (raises if that is impossible)."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        src = csrc_dir()
        if src is None:
            raise RuntimeError("optimlab's C++ sources (csrc/) were not found next to the package")
        cap = capability()
        module = _import_built(_module_name(cap), build_directory(cap, src, _PREBUILT))
        if module is not None:  # built by pip install for these sources, this torch and CPU
            return _loaded(module)
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler found (looked for {compiler!r}; set CXX to one)")
        _lock_timeout()  # a malformed value raises here, not as a build failure to remember
        failed = build_directory(cap, src) / _FAILED
        if failed.is_file():  # every process would otherwise spend minutes failing again
            raise RuntimeError(_remembered(failed.read_text(), failed))
        errors = []
        for candidate in _candidates(cap):
            # (KeyboardInterrupt and SystemExit are no Exception: they stop the loop at once)
            try:
                return _loaded(_build(candidate, src, verbose))
            except Exception as e:  # noqa: BLE001 - reported as the reason
                if _interrupted(e):
                    raise KeyboardInterrupt(f"building optimlab's C++ CPU kernels ({candidate})") from e
                errors.append(f"{candidate}: {type(e).__name__}: {_tail(str(e))}")
        message = "building optimlab's C++ CPU kernels failed: " + " | ".join(errors)
        with contextlib.suppress(OSError):  # (a read-only cache only loses the memo)
            failed.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(failed, message)
        raise RuntimeError(_remembered(message, failed))


def _loaded(module: ModuleType) -> ModuleType:
    """Keep ``module`` as the process's extension, and give the optimizers' step its host helper."""
    global _module
    from .. import optimizer

    _module = module
    optimizer.plan_scan = getattr(module, "plan_scan", None)
    optimizer.state_columns = getattr(module, "state_columns", None)
    return module


def _remembered(message: str, failed: Path) -> str:
    """The reason given for a failure remembered in the file ``failed``."""
    return (f"{message} (remembered in {failed}: later processes do not build again until "
            "python -m optimlab.kernels --rebuild)")


def _forget() -> None:
    """Delete the stamps and the remembered failure, for ``--rebuild``: the next load() builds."""
    global _module, _checked
    cap, src = capability(), csrc_dir()
    for candidate in _candidates(cap):
        for name in (_STAMP, _FAILED):
            (build_directory(candidate, src) / name).unlink(missing_ok=True)
    _module, _checked = None, False


def _tail(message: str, lines: int = 3) -> str:
    kept = [ln for ln in message.strip().splitlines() if ln.strip()][-lines:]
    return " / ".join(kept)


@assume_constant_result
def availability() -> str | None:
    """None if the cpp backend can run here, else why not (the build is attempted once).

    Decided once per process, at plan time (the dispatcher asks when it resolves a param
    group's backend), and cached. Under ``torch.compile`` dynamo does not trace this: it
    calls it eagerly and keeps the answer as a constant, so no compiled region contains
    the loader, and the build happens outside it (at the first eager step, ``backends()``
    or ``python -m optimlab.kernels``; or, if the very first step is a compiled one, once
    while dynamo traces it)."""
    global _checked, _unavailable_reason
    if not _checked:
        try:
            load()
            _unavailable_reason = None
        except Exception as e:  # noqa: BLE001
            _unavailable_reason = f"the C++ CPU backend is unavailable: {e}"
        _checked = True
    return _unavailable_reason


_dispatch.register_availability("cpp", availability)


def prebuild(root: Path, verbose: bool = False) -> Path:
    """Build the extension for this machine into ``root`` and keep only what a process loads
    (the library and its stamp; earlier builds in ``root`` are removed): what ``pip install``
    runs (setup.py). Raises if the build fails. Returns the library's path."""
    cap, src = capability(), csrc_dir()
    if src is None:
        raise RuntimeError("optimlab's C++ sources (csrc/) were not found next to the package")
    directory, cached = build_directory(cap, src, root), build_directory(cap, src)
    if (cached / _STAMP).is_file() and (cached / (lib := (cached / _STAMP).read_text().strip())).is_file():
        # this machine's cache has the same build (same hash): copied, not compiled again
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached / lib, directory / lib)
        _write_atomic(directory / _STAMP, lib)
    module = _build(cap, src, verbose, root)
    lib = Path(module.__file__)
    for old in root.iterdir():
        if old.is_dir() and old != directory:
            shutil.rmtree(old, ignore_errors=True)
    for f in directory.iterdir():
        if f.name not in (_STAMP, lib.name):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    return lib


def _main(argv=None) -> int:
    """``python -m optimlab.kernels [--rebuild] [--verbose] [--into DIR]``: build ahead of time."""
    import argparse

    parser = argparse.ArgumentParser(description="Build optimlab's C++ CPU kernels ahead of time.")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--rebuild", action="store_true",
                        help="forget a remembered failed build (and the stamp of a finished one) and build again")
    parser.add_argument("--into", type=Path, metavar="DIR",
                        help="build into DIR and keep only the library (what pip install does, into the package)")
    args = parser.parse_args(argv)
    if args.rebuild:
        _forget()
    t0 = time.perf_counter()
    try:
        if args.into is not None:
            lib = prebuild(args.into, verbose=args.verbose)
            print(f"optimlab cpp backend: {lib}, built in {time.perf_counter() - t0:.0f} s")
            return 0
        module = load(verbose=args.verbose)
    except RuntimeError as e:
        print(f"optimlab cpp backend: unavailable: {e}", file=sys.stderr)
        return 1
    print(f"optimlab cpp backend: {module.__file__} ({module.capability}, "
          f"{module.vector_width_float} floats per vector), ready in {time.perf_counter() - t0:.1f}s")
    return 0
