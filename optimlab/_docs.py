"""Docstring text shared by the optimizers, and the helper that puts it in place.

An optimizer's class docstring holds what is its own (its update rule, its
arguments, its state) and, where text shared with other optimizers belongs, a
placeholder: a line that is only ``{name}``. :func:`document` replaces every
placeholder with the fragment of that name, indented as the placeholder line was
(as torch.optim inserts its ``_foreach_doc``, ``_fused_doc``, ... into each
docstring), so that each shared paragraph is written once, here:

* in ``Args:``: ``{params}``, ``{foreach}``, ``{fused}``, ``{maximize}``,
  ``{capturable}``, ``{differentiable}``;
* as a section of its own: ``{backends}``, which says how optimlab chooses the
  backend of a param group (constructor flags, then the ``OPTIMLAB_BACKEND``
  environment variable, then the device's measured default), which backends this
  optimizer has, and what they cost. Its text depends on the class: which of the
  ``foreach`` / ``fused`` flags it takes and which backends implement it.

The docs site (``mkdocs.yml``) renders the filled-in ``__doc__``: its griffe
extension ``docs/griffe_runtime_docstrings.py`` reads it from the imported class
for every docstring that has placeholders in the source.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Callable, TypeVar

__all__ = ["FRAGMENTS", "PLACEHOLDER", "backends_fragment", "document", "fill"]

T = TypeVar("T", bound=type)

#: a placeholder line: only ``{name}``, indented
PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<name>\w+)\}[ \t]*$", re.M)

#: ``Args:`` entries shared by several optimizers (each ends with its default, as torch's)
FRAGMENTS: dict[str, str] = {
    "params": """\
params (iterable): an iterable of parameters to optimize, of named parameters
    (``(name, tensor)`` pairs, as ``model.named_parameters()`` yields), or of dicts
    defining param groups. With named parameters, every parameter of every group
    must be named.""",
    "foreach": """\
foreach (bool, optional): ``True`` runs the ``foreach`` backend (``torch._foreach_*``
    ops over a param group's tensors, bucketed by device and dtype; it needs about
    ``sizeof(params)`` more peak memory than the for-loop). ``False`` runs the
    ``forloop`` reference, one param at a time. ``None`` leaves the choice to the
    ``OPTIMLAB_BACKEND`` environment variable and the device's default, as
    Backends below says (default: None)""",
    "fused": """\
fused (bool, optional): ``True`` runs the device's fused backend: ``cpp`` (fused
    C++ kernels) for CPU params, ``triton`` (fused Triton kernels) for CUDA params,
    and raises ``RuntimeError`` when that backend cannot run here (no C++ compiler,
    no Triton); float64, float32, float16 and bfloat16 params are supported, and
    ``torch.amp.GradScaler`` then unscales the grads and skips inf/NaN steps inside
    the kernel, as with torch's fused optimizers. ``False`` runs the ``forloop``
    reference. ``None`` leaves the choice to ``OPTIMLAB_BACKEND`` and the device's
    default. ``True`` cannot be combined with ``foreach=True`` or
    ``differentiable=True`` (default: None)""",
    "maximize": """\
maximize (bool, optional): maximize the objective with respect to the params,
    instead of minimizing (default: False)""",
    "capturable": """\
capturable (bool, optional): whether this instance is safe to capture in a CUDA
    graph or to compile with ``torch.compile``: step counters stay on the params'
    device and the step makes no host sync. Only params on supported accelerators
    can be captured. It slows down an uncaptured step, so leave it ``False`` unless
    you capture (default: False)""",
    "differentiable": """\
differentiable (bool, optional): whether autograd runs through the optimizer step
    (otherwise ``step()`` runs under ``torch.no_grad()``). It always runs the
    ``forloop`` reference backend and is slower, so leave it ``False`` unless you
    differentiate through the step (default: False)""",
    "low_precision": """\
kahan_sum (bool, optional): optimlab only, keyword-only, like the next three (the rule,
    for every backend: ``optimlab.low_precision``). Update bfloat16/float16 params in
    float32 and write them back with Kahan compensation: the rounding error of each
    write is kept in ``state[p]["kahan_comp"]`` (the param's dtype and shape) and added
    to the next update, so updates below half an ulp accumulate instead of being lost.
    Ignored, with one warning per optimizer, for float32/float64 params. Not with
    ``stochastic_rounding``, ``differentiable`` or ``capturable`` (default: False)
stochastic_rounding (bool, optional): update bfloat16 params in float32 and round
    the result to bfloat16 stochastically (unbiased: up with probability the
    fraction of an ulp), from a Philox stream keyed by ``state[p]["sr_seed"]``,
    counted by ``state[p]["sr_step"]`` and the element's index. float16 params
    raise ``ValueError`` (use ``kahan_sum``); float32/float64 params are updated as
    without it, with one warning per optimizer (default: False)
state_dtype (torch.dtype, optional): dtype of the per-element state (moments,
    accumulators): ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``; the
    update is then computed in float32 (float64 for float64 params) and the state
    rounded to nearest into this dtype. Step counters and 0-dim scalars keep their
    dtype. None: the param's dtype, as torch.optim (default: None)
rounding_seed (int, optional): key of the stochastic rounding stream; each param's
    ``sr_seed`` is derived from it and the param's index. None draws one from
    torch's default generator when ``stochastic_rounding`` is on (so it follows
    ``torch.manual_seed``). These four are param group keys (per group, saved in
    ``state_dict``), present only when one of them is given (default: None)""",
}

_BACKEND_NAMES = {
    "forloop": "``forloop`` (the reference: torch.optim's for-loop implementation)",
    "foreach": "``foreach`` (``torch._foreach_*`` ops over device/dtype buckets)",
    "cpp": "``cpp`` (fused C++ CPU kernels)",
    "triton": "``triton`` (fused multi-tensor Triton kernels, for CUDA)",
}


def backends_fragment(name: str, flags: set[str], backends: tuple[str, ...]) -> str:
    """The ``Backends:`` section of optimizer ``name``, which takes the constructor
    arguments ``flags`` (``foreach``, ``fused``, ``differentiable`` are read) and is
    implemented on ``backends``."""
    unknown = set(backends) - set(_BACKEND_NAMES)
    if unknown or "forloop" not in backends:
        raise ValueError(f"{name}: bad backends {backends!r}")
    listed = "; ".join(_BACKEND_NAMES[b] for b in _BACKEND_NAMES if b in backends)
    if {"foreach", "fused"} <= flags:
        rule_flags = (
            "the constructor flags: ``fused=True`` runs the device's fused backend (``cpp`` "
            "on CPU, ``triton`` on CUDA; an error if it cannot run), ``foreach=True`` runs "
            "``foreach``, ``foreach=False`` or ``fused=False`` runs ``forloop``"
        )
    elif "foreach" in flags:
        rule_flags = (
            "the constructor flags: ``foreach=True`` runs ``foreach``, ``foreach=False`` "
            "runs ``forloop``"
        )
    else:
        rule_flags = ""
    if rule_flags and "differentiable" in flags:
        rule_flags += "; ``differentiable=True`` always runs ``forloop``"
    cpu = [f"``{b}``" for b in ("cpp", "foreach", "forloop") if b in backends]
    cpu_default = cpu[0] if len(cpu) == 1 else f"the first of {', '.join(cpu)} that can run"
    cuda_default = "``foreach``" if "foreach" in backends else "``forloop``"
    rules = [rule_flags] if rule_flags else []
    rules += [
        "the environment variable ``OPTIMLAB_BACKEND`` (``forloop``, ``foreach``, ``cpp`` "
        "or ``triton``), read at every step; a backend this optimizer lacks, or one that "
        "cannot run here, is replaced by the default with one warning",
        "the default for the device type: the backend measured fastest for this optimizer "
        "and dtype on it (``optimlab/_defaults.json``, written by ``python -m optimlab.bench "
        f"--update-defaults``); without a measurement, {cpu_default} on CPU, and "
        f"{cuda_default} (torch's default) on CUDA until the device is measured.",
    ]
    intro = (
        f"optimlab implements {name} on these backends: {listed}. Every backend computes "
        "torch.optim's update (the tests compare each with torch.optim). Each param group "
        "runs on one backend, resolved when ``step()`` plans the group; ``opt.backends()`` "
        "returns a ``BackendChoice(name, reason)`` per group. "
    )
    if not rule_flags:
        intro += f"{name} takes no ``foreach`` or ``fused`` flag (as in torch). "
    intro += "The first rule that applies decides:"
    paragraphs = [intro] + [f"{i}. {r}{';' if i < len(rules) else ''}" for i, r in enumerate(rules, 1)]
    if "cpp" in backends:
        cost = (
            "Cost: ``forloop`` and ``foreach`` are plain PyTorch. ``pip install`` compiles "
            "the ``cpp`` backend's C++ extension for the installing machine and torch, so a "
            "step loads it (about 0.1 s, once per process). Where that build does not match "
            "(torch installed or upgraded after optimlab, another CPU), the first ``cpp`` step "
            "of a process compiles it, once, saying so on stderr (about 1-2 minutes on a 2-core "
            "VM), into a cache (``$OPTIMLAB_CACHE_DIR``, else ``~/.cache/optimlab``); "
            "``python -m optimlab.kernels`` builds it ahead of time. Without a working C++ "
            "compiler the default falls back to the next fastest measured backend with one "
            "warning."
        )
    else:
        plain = "``forloop`` and ``foreach`` are" if "foreach" in backends else "``forloop`` is"
        cost = f"Cost: {name} has no ``cpp`` kernel; {plain} plain PyTorch (nothing to compile)."
    if "triton" in backends:
        cost += (
            " ``triton`` needs Triton (``pip install \"optimlab[triton]\"``) and compiles each "
            "kernel on its first use (cached by Triton); CPU tensors run only in Triton's "
            "interpreter (``TRITON_INTERPRET=1``)."
        )
    paragraphs.append(cost)
    lines = ["Backends:"]
    for i, text in enumerate(paragraphs):
        item = text[:1].isdigit()
        if not item or i == 1:
            lines.append("")
        lines += textwrap.wrap(text, 84, initial_indent="    ",
                               subsequent_indent="       " if item else "    ",
                               break_long_words=False, break_on_hyphens=False)
    del lines[1]  # no blank line right under the title
    return "\n".join(lines)


def fill(doc: str, fragments: dict[str, str]) -> str:
    """``doc`` with each placeholder line replaced by its fragment, indented as the line."""

    def replace(m: re.Match) -> str:
        text = fragments[m.group("name")]  # KeyError: a placeholder with no fragment
        indent = m.group("indent")
        return "\n".join(indent + line if line else "" for line in text.splitlines())

    return PLACEHOLDER.sub(replace, doc)


def document(*, backends: tuple[str, ...], fragments: dict[str, str] | None = None) -> Callable[[T], T]:
    """Class decorator: fill the placeholders of an optimizer's docstring.

    ``backends`` names the backends that implement the optimizer (the test suite
    checks it against the registry, which the fused backends fill only later, when
    ``optimlab.kernels`` is imported). The ``foreach``, ``fused`` and
    ``differentiable`` flags are read from the constructor's signature.
    ``fragments`` adds fragments of the caller's own (text shared by the classes of
    one module, e.g. Adam's and AdamW's arguments), or overrides shared ones.
    """

    def decorate(cls: T) -> T:
        if cls.__doc__ is None:  # python -OO
            return cls
        flags = set(inspect.signature(cls.__init__).parameters)
        filled = {**FRAGMENTS, **(fragments or {})}
        filled["backends"] = backends_fragment(cls.__name__, flags, backends)
        cls.__doc__ = fill(cls.__doc__, filled)
        return cls

    return decorate
