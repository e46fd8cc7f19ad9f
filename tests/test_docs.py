"""The docs: the site builds without a warning, and every optimizer's docstring is complete.

Each optimizer's docstring must document every constructor argument with its real
default, say how ``OPTIMLAB_BACKEND`` chooses a backend, and name exactly the backends
registered for it. The site build runs ``mkdocs build --strict`` (mkdocs and
mkdocstrings are in the ``test`` extra).
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import optimlab
from optimlab import _dispatch
from optimlab._docs import PLACEHOLDER

REPO = Path(__file__).resolve().parents[1]

OPTIMIZERS = [
    getattr(optimlab, name) for name in optimlab.__all__
    if inspect.isclass(getattr(optimlab, name))
    and issubclass(getattr(optimlab, name), optimlab.Optimizer)
    and getattr(optimlab, name) is not optimlab.Optimizer
]


def test_every_optimizer_is_checked():
    assert len(OPTIMIZERS) >= 15


def _args(doc: str) -> dict[str, str]:
    """``{argument: its text}`` from the ``Args:`` section of a cleaned docstring."""
    lines = doc.split("\nArgs:\n", 1)[1].splitlines()
    entries: dict[str, str] = {}
    name = None
    for line in lines:
        if line and not line.startswith(" "):  # the next section
            break
        m = re.match(r"^    (\w+) \(", line)
        if m:
            name = m.group(1)
            entries[name] = line.strip()
        elif name is not None and line.strip():
            entries[name] += " " + line.strip()
    return entries


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_docstring_documents_every_argument_with_its_default(cls):
    doc = inspect.getdoc(cls)
    assert not PLACEHOLDER.search(doc), "a placeholder was left unfilled"
    assert "OPTIMLAB_BACKEND" in doc
    params = inspect.signature(cls.__init__).parameters
    args = _args(doc)
    expected = [p for p in params if p != "self"]
    assert sorted(args) == sorted(expected), "Args: must list exactly the constructor's arguments"
    for name, text in args.items():
        default = params[name].default
        if default is inspect.Parameter.empty:
            continue
        m = re.search(r"\(default: (.*)\)$", text)
        assert m, f"{name}: no '(default: ...)' at the end of its entry"
        assert ast.literal_eval(m.group(1)) == default, f"{name}: documented default {m.group(1)}, real {default!r}"


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_docstring_names_the_registered_backends(cls):
    doc = " ".join(inspect.getdoc(cls).split())
    m = re.search(rf"optimlab implements {cls.__name__} on these backends: (.*?)\. ", doc)
    assert m, "no backend list"
    named = tuple(re.findall(r"``(\w+)`` \(", m.group(1)))
    assert sorted(named) == sorted(_dispatch.backends_of(cls.algorithm))


def test_mkdocs_build_strict(tmp_path):
    # (mkdocs is in the test extra, which README's set-up installs: no skip)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    # the docstrings as filled in at import time, not their placeholders
    assert "OPTIMLAB_BACKEND" in api and "{backends}" not in api
    for cls in OPTIMIZERS:
        assert f"optimlab implements {cls.__name__} on these backends" in api
