"""Metadata lives in pyproject.toml; this only ships csrc/ inside wheels.

The "cpp" backend compiles csrc/ on first use (optimlab/kernels/cpu.py). A source
checkout or editable install finds it at the repo root; a built wheel carries a copy
at optimlab/kernels/csrc/, where the loader also looks.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py


class build_py(_build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "csrc"
        if src.is_dir() and not self.editable_mode:
            dst = Path(self.build_lib, "optimlab", "kernels", "csrc")
            shutil.copytree(src, dst, dirs_exist_ok=True)


setup(cmdclass={"build_py": build_py})
