"""Griffe extension for the docs site: docstrings assembled at import time.

optimlab's optimizer docstrings hold placeholder lines (``{backends}``, ``{foreach}``,
...) that ``optimlab._docs.document`` fills in when the class is defined, so the
source text griffe reads statically is not what ``help()`` shows. For every class
whose static docstring has such a placeholder, this extension imports the class and
uses its ``__doc__`` instead. Only those modules are imported (not every module of
the package, as griffe's ``force_inspection`` would, ``__main__`` modules included).
"""

from __future__ import annotations

import importlib
import inspect
import re

import griffe

_PLACEHOLDER = re.compile(r"^[ \t]*\{\w+\}[ \t]*$", re.M)


class RuntimeDocstrings(griffe.Extension):
    """Replace a class docstring that has placeholders with the runtime ``__doc__``."""

    def on_class_members(self, *, cls: griffe.Class, **kwargs) -> None:
        if cls.docstring is None or not _PLACEHOLDER.search(cls.docstring.value):
            return
        obj = importlib.import_module(cls.module.path)
        for part in cls.path[len(cls.module.path) + 1:].split("."):
            obj = getattr(obj, part)
        doc = inspect.cleandoc(obj.__doc__)
        if _PLACEHOLDER.search(doc):
            raise ValueError(f"{cls.path}: docstring placeholders left unfilled")
        old = cls.docstring
        cls.docstring = griffe.Docstring(doc, lineno=old.lineno, endlineno=old.endlineno,
                                         parent=cls, parser=old.parser,
                                         parser_options=old.parser_options)
