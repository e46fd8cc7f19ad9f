"""Metadata lives in pyproject.toml. This file adds two build steps:

* wheels carry a copy of csrc/ at optimlab/kernels/csrc/ (a source checkout or editable
  install finds it at the repo root), so the "cpp" backend can compile it where needed;
* the C++ kernels are compiled at install time (``python -m optimlab.kernels --into``)
  into optimlab/kernels/_prebuilt/ (the source tree for an editable install, the wheel
  otherwise), so the first optimizer step in a process compiles nothing.

The compile runs in the environment being installed into, against the torch installed
there: pip's isolated build environment has no torch and this never asks pip for one.
Without torch there yet, with ``OPTIMLAB_NO_PREBUILD=1``, or if the compile fails, the
install goes on and the kernels are compiled on first use instead (with a message), or
ahead of time by ``python -m optimlab.kernels``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent


def _say(message: str) -> None:
    print(f"optimlab setup: {message}", file=sys.stderr, flush=True)


def _prebuild(target: Path) -> None:
    """Compile the C++ kernels into ``target`` with the target environment's torch."""
    if os.environ.get("OPTIMLAB_NO_PREBUILD"):
        _say("OPTIMLAB_NO_PREBUILD is set: the C++ kernels will be compiled on first use")
        return
    # pip's build isolation points PYTHONPATH at a sitecustomize that hides the environment's
    # site-packages (and sets PYTHONNOUSERSITE): the compile needs them, and this source tree.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    env["PYTHONPATH"] = str(ROOT)
    if subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True).returncode:
        _say("torch is not installed in this environment yet: the C++ kernels will be compiled on "
             "first use (or ahead of time: python -m optimlab.kernels)")
        return
    _say("compiling the C++ CPU kernels (about 1-2 minutes)")
    done = subprocess.run([sys.executable, "-m", "optimlab.kernels", "--into", str(target)], env=env, cwd=ROOT)
    if done.returncode:
        shutil.rmtree(target, ignore_errors=True)
        _say("the C++ kernels did not compile (see above): they will be compiled on first use")


class build_py(_build_py):
    def run(self):
        super().run()
        src = ROOT / "csrc"
        if src.is_dir() and not self.editable_mode:
            shutil.copytree(src, Path(self.build_lib, "optimlab", "kernels", "csrc"), dirs_exist_ok=True)
        if self.editable_mode:  # an editable install imports the package from this tree
            _prebuild(ROOT / "optimlab" / "kernels" / "_prebuilt")
        else:
            _prebuild(Path(self.build_lib, "optimlab", "kernels", "_prebuilt"))


class BinaryDistribution(Distribution):
    """Wheels hold the compiled kernels: tag them for this platform and Python."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": build_py}, distclass=BinaryDistribution)
