"""The C++ build (optimlab/kernels/cpp_build.py): the install-time build (setup.py), and a
first use without one: what it says on stderr, Ctrl-C, a stale lock file, a remembered
failure, and no build when the backend is not cpp.

No compiler runs here: ``cpp_extension.load`` (or ``_build``) is replaced by a fake, in an
empty cache in tmp_path. (The real build is exercised by the cpp tests, in the shared cache.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils import cpp_extension

from optimlab import optimizer
from optimlab.kernels import cpp_build

TOP = "AVX512"  # the instruction set the tests' "CPU" runs: three candidates to try


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not loaded the extension, with a compiler and an empty cache."""
    monkeypatch.setenv("OPTIMLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_build, "_PREBUILT", tmp_path / "prebuilt")  # no install-time build
    for hook in ("plan_scan", "state_columns"):  # (restored after the test)
        monkeypatch.setattr(optimizer, hook, getattr(optimizer, hook))
    monkeypatch.delenv("OPTIMLAB_BUILD_LOCK_TIMEOUT", raising=False)
    for name, value in (("_module", None), ("_checked", False), ("_unavailable_reason", None),
                        ("_announced", False)):
        monkeypatch.setattr(cpp_build, name, value)
    monkeypatch.setattr(cpp_build, "capability", lambda: TOP)
    monkeypatch.setattr(cpp_build.shutil, "which", lambda name: f"/usr/bin/{name}")
    return tmp_path


def _extension(directory: Path, name: str) -> SimpleNamespace:
    """What cpp_extension.load returns, as far as the loader and ``_main`` look at it."""
    return SimpleNamespace(__file__=str(directory / f"{name}.so"), capability=TOP, vector_width_float=16)


@pytest.fixture
def compiles(monkeypatch):
    """cpp_extension.load replaced: each call records (build directory, whether its lock
    file was there); a directory named in ``fail`` fails like a compiler error."""
    calls, fail = [], set()

    def load(name, build_directory, **kwargs):
        directory = Path(build_directory)
        calls.append((directory.name, (directory / "lock").exists()))
        if directory.name in fail:
            raise RuntimeError(f"Error building extension '{name}': c++: error: unrecognized option")
        return _extension(directory, name)

    monkeypatch.setattr(cpp_extension, "load", load)
    return SimpleNamespace(calls=calls, fail=fail)


@pytest.fixture
def builds(monkeypatch):
    """``_build`` replaced: ``builds.calls`` the instruction sets tried, ``builds.outcome(cap)``
    what each returns (or raises, if an exception)."""
    state = SimpleNamespace(calls=[], outcome=lambda cap: _extension(Path("/nowhere"), cap))

    def build(cap, src, verbose=False):
        state.calls.append(cap)
        result = state.outcome(cap)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(cpp_build, "_build", build)
    return state


def _dir(cap: str = TOP) -> Path:
    return cpp_build.build_directory(cap)


# ---- the install-time build -----------------------------------------------------------------------
def _library(directory: Path, name: str = f"optimlab_cpu_{TOP.lower()}") -> Path:
    """A stand-in for a built extension (a module the loader can import), and its stamp."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(f"capability = {TOP!r}\nvector_width_float = 16\n")
    (directory / "BUILT").write_text(f"{name}.py")
    return directory / f"{name}.py"


def test_the_install_time_build_is_loaded_without_compiling(fresh, compiles, capsys, monkeypatch):
    monkeypatch.setattr(cpp_build.shutil, "which", lambda name: None)  # not even a compiler needed
    lib = _library(cpp_build.build_directory(TOP, root=cpp_build._PREBUILT))
    assert cpp_build.availability() is None
    assert cpp_build._module.__file__ == str(lib)
    assert compiles.calls == [] and capsys.readouterr().err == "" and not _dir().exists()


def test_an_install_time_build_of_other_sources_is_not_loaded(fresh, compiles):
    _library(cpp_build._PREBUILT / f"cpu-{TOP.lower()}-0123456789abcdef")  # other sources/torch
    cpp_build.load()
    assert compiles.calls == [(_dir().name, False)]


def test_into_keeps_only_the_library(fresh, compiles, monkeypatch, capsys):
    def load(name, build_directory, **kwargs):  # a compile leaves its intermediates
        directory = Path(build_directory)
        for f in ("build.ninja", "adam.o", ".ninja_log", f"{name}.so"):
            (directory / f).write_text("")
        return _extension(directory, name)

    monkeypatch.setattr(cpp_extension, "load", load)
    root = fresh / "into"
    older = root / "cpu-avx512-0123456789abcdef"  # an earlier install's build
    older.mkdir(parents=True)
    assert cpp_build._main(["--into", str(root)]) == 0
    built = cpp_build.build_directory(TOP, root=root)
    assert sorted(f.name for f in built.iterdir()) == ["BUILT", f"optimlab_cpu_{TOP.lower()}.so"]
    assert not older.exists() and f"{built}" in capsys.readouterr().out


def test_into_copies_the_same_build_from_the_cache(fresh, compiles):
    lib = _library(_dir())  # this machine already built these sources for this torch
    root = fresh / "into"
    assert cpp_build.prebuild(root) == cpp_build.build_directory(TOP, root=root) / lib.name
    assert compiles.calls == []


@pytest.mark.skipif(not os.environ.get("OPTIMLAB_EXPECT_PREBUILT"),
                    reason="checks the install CI just ran (.ci/run sets OPTIMLAB_EXPECT_PREBUILT)")
def test_after_install_the_first_step_compiles_nothing(tmp_path):
    code = ("import time, torch, optimlab\n"
            "from optimlab.kernels import cpp_build\n"
            "p = torch.nn.Parameter(torch.ones(8)); p.grad = torch.ones(8)\n"
            "opt = optimlab.AdamW([p])\n"
            "t0 = time.perf_counter(); opt.step(); t = time.perf_counter() - t0\n"
            "print(opt.backends()[0].name, cpp_build._module.__file__, f'{t:.3f}')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPTIMLAB_BACKEND", "OPTIMLAB_CPU_ISA")}
    env["OPTIMLAB_CACHE_DIR"] = str(tmp_path)  # an empty cache: nothing there to import
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    backend, lib, seconds = run.stdout.split()
    print(f"first step {seconds} s with {lib}")
    assert backend == "cpp" and Path(lib).is_relative_to(cpp_build._PREBUILT)
    assert "compiling" not in run.stderr and not any(tmp_path.glob("cpu-*"))


# ---- what a build says ---------------------------------------------------------------------------
def test_a_build_says_what_why_how_long(fresh, compiles, capsys):
    cpp_build.load()
    err = capsys.readouterr().err
    assert f"compiling the C++ CPU kernels ({TOP}) into {_dir()}" in err
    assert "about 1-2 minutes" in err and "python -m optimlab.kernels" in err
    assert re.search(rf"\({TOP}\): built after \d+ s", err)
    assert err.index("about 1-2 minutes") < err.index("built after")


def test_the_banner_is_printed_once_per_process(fresh, compiles, capsys):
    compiles.fail.add(_dir().name)  # the compiler does not know the AVX-512 flags: AVX2 follows
    cpp_build.load()
    err = capsys.readouterr().err
    assert err.count("about 1-2 minutes") == 1
    assert f"({TOP}): build failed after" in err and "(AVX2): built after" in err
    assert "compiling the C++ CPU kernels for AVX2 instead" in err


def test_importing_a_finished_build_says_nothing(fresh, compiles, capsys, monkeypatch):
    monkeypatch.setattr(cpp_build, "_import_built", lambda name, directory: _extension(directory, name))
    cpp_build.load()
    assert capsys.readouterr().err == "" and compiles.calls == []


# ---- Ctrl-C --------------------------------------------------------------------------------------
def _ninja_failure(returncode: int, output: str) -> RuntimeError:
    """What cpp_extension raises when ninja exits with an error."""
    error = RuntimeError(f"Error building extension 'optimlab_cpu_avx512': {output}")
    error.__cause__ = subprocess.CalledProcessError(returncode, ["ninja", "-v"], output.encode())
    return error


@pytest.mark.parametrize("raised,expected", [
    (KeyboardInterrupt(), KeyboardInterrupt),
    (SystemExit(1), SystemExit),
    # ninja got the SIGINT and exited before this process did: cpp_extension's RuntimeError
    (_ninja_failure(2, "[3/13] c++ adam.cpp\nninja: build stopped: interrupted by user."), KeyboardInterrupt),
    (_ninja_failure(-signal.SIGINT, ""), KeyboardInterrupt),
], ids=["KeyboardInterrupt", "SystemExit", "ninja-interrupted", "ninja-killed-by-SIGINT"])
def test_ctrl_c_stops_at_once(fresh, builds, raised, expected):
    builds.outcome = lambda cap: raised
    with pytest.raises(expected):
        cpp_build.availability()
    assert builds.calls == [TOP]  # no other instruction set was tried
    assert not (_dir() / "FAILED").exists()  # and nothing is remembered
    assert not cpp_build._checked  # the next step asks again


# ---- a lock file left by a killed build ------------------------------------------------------------
def _lock(age_s: float) -> Path:
    lock = _dir() / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    os.utime(lock, (time.time() - age_s,) * 2)
    return lock


def test_a_stale_lock_is_removed(fresh, compiles, capsys):
    lock = _lock(age_s=1000)  # older than the default timeout (600 s)
    cpp_build.load()
    assert compiles.calls == [(_dir().name, False)] and not lock.exists()
    assert f"removing the lock file {lock}" in capsys.readouterr().err


def test_a_young_lock_is_waited_for_then_removed(fresh, compiles, capsys, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_BUILD_LOCK_TIMEOUT", "0.3")
    monkeypatch.setattr(cpp_build, "_LOCK_POLL_S", 0.02)
    _lock(age_s=0)
    t0 = time.perf_counter()
    cpp_build.load()
    assert time.perf_counter() - t0 >= 0.25
    assert compiles.calls == [(_dir().name, False)]
    err = capsys.readouterr().err
    assert "another process is building" in err and "removing the lock file" in err


def test_the_build_another_process_finishes_is_imported(fresh, compiles, capsys, monkeypatch):
    monkeypatch.setattr(cpp_build, "_LOCK_POLL_S", 0.02)
    lock = _lock(age_s=0)
    # the other process's build is importable once its lock is gone
    monkeypatch.setattr(cpp_build, "_import_built",
                        lambda name, d: None if (d / "lock").exists() or d.is_relative_to(cpp_build._PREBUILT)
                        else _extension(d, name))
    threading.Timer(0.2, lock.unlink).start()
    cpp_build.load()
    err = capsys.readouterr().err
    assert compiles.calls == [] and "another process is building" in err and "compiling" not in err


# ---- a failed build is remembered --------------------------------------------------------------------
def test_a_failed_build_is_remembered(fresh, builds, capsys):
    builds.outcome = lambda cap: RuntimeError(f"c++: error: no {cap}")
    with pytest.raises(RuntimeError, match="no DEFAULT"):
        cpp_build.load()
    assert builds.calls == ["AVX512", "AVX2", "DEFAULT"]
    assert "no DEFAULT" in (_dir() / "FAILED").read_text()

    # a later process: unavailable, with the reason, without building again
    cpp_build._module, cpp_build._checked = None, False
    why = cpp_build.availability()
    assert "no DEFAULT" in why and "python -m optimlab.kernels --rebuild" in why
    assert cpp_build._main([]) == 1 and "unavailable" in capsys.readouterr().err
    assert builds.calls == ["AVX512", "AVX2", "DEFAULT"]


def test_rebuild_forgets_the_failure(fresh, builds, capsys):
    for name in ("FAILED", "BUILT"):
        _dir().mkdir(parents=True, exist_ok=True)
        (_dir() / name).write_text("an earlier process's")
    assert cpp_build._main(["--rebuild"]) == 0
    assert builds.calls == [TOP]
    assert not (_dir() / "FAILED").exists() and not (_dir() / "BUILT").exists()
    assert f"({TOP}, 16 floats per vector), ready in" in capsys.readouterr().out


# ---- nothing is built when the backend is not cpp --------------------------------------------------
CHOSEN_ELSEWHERE = """
import os, torch
from torch.utils import cpp_extension
def load(*args, **kwargs):
    raise RuntimeError("a C++ build was started")
cpp_extension.load = load
import optimlab
from optimlab.kernels import cpp_build
p = torch.ones(3)
p.grad = torch.ones(3)
for kwargs in (dict(foreach=True), dict(foreach=False), dict(differentiable=True), {}):
    if not kwargs:
        os.environ["OPTIMLAB_BACKEND"] = "forloop"
    opt = optimlab.Adam([p], lr=0.1, **kwargs)
    opt.step()
    print(opt.backends()[0].name)
print("availability asked:", cpp_build._checked)
"""


def test_no_build_when_the_backend_is_not_cpp(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPTIMLAB_BACKEND"}
    env["OPTIMLAB_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", CHOSEN_ELSEWHERE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:-1] == ["foreach", "forloop", "forloop", "forloop",
                                           "availability asked: False"]
    assert list(tmp_path.glob("cpu-*")) == [] and "compiling" not in run.stderr


def test_import_builds_nothing(tmp_path):
    # (that it imports no triton: test_drop_in's test_import_does_not_import_dynamo_or_triton)
    code = ("import optimlab\n"
            "from optimlab.kernels import cpp_build\n"
            "print(cpp_build._module is None, cpp_build._checked)\n")
    env = dict(os.environ, OPTIMLAB_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "False"]
