"""The Triton updates as torch operators: ``torch.ops.optimlab.triton_<algorithm>_``.

One operator per algorithm of ``_table.ALGORITHMS`` (SparseAdam excepted: see there), so
that ``make_fx``, ``torch.export`` and ``torch.compile`` see a step as one call that
mutates params, grads (unscaled in place with AMP) and state:

    triton_adam_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] step,
                 Tensor(d!)[] exp_avg, ..., Tensor?[] numbers, str hparams,
                 Tensor? grad_scale=None, Tensor? found_inf=None) -> ()

The tensor lists are the algorithm's state lists, in the table's order (an absent list is
empty; a list holding None, e.g. Adafactor's ``row_var`` of a 1-D param, passes its
tensors only). ``hparams`` is the group's entries the update reads (the table's
``hparams``), as a Python literal in which each float and Tensor stands as a reference
into ``numbers``: a Tensor as it is (a graph input), a float as a 0-dim float64 tensor
made by tensor arithmetic (as ``ops.call`` passes the cpp operators' floats: a float
argument would be a constant the graph is guarded on, so a scheduler's ``lr`` would
recompile every step; this way dynamo makes it a graph input after one recompile). The
rest (bools, ints, strings, None) are constants of the graph, as any Python value a
compiled step reads. It also says which state lists are absent or partial.

Implementation (CPU, for Triton's interpreter, and CUDA): decode, then run the update as
in eager code, host side included (launch tables, step counters, scalars from the
algorithm's shared functions, at the step the counters hold when it runs), so a replayed
``make_fx`` graph advances the step and a compiled step gives the eager numbers. The fake
implementation does nothing (the operators return nothing).

Why not ``torch.library.triton_op`` with ``wrap_triton``: it lets the compiler trace the
operator's body, but the launcher's kernels take their tensors as addresses in an int64
table (``data_ptr``), which fake tensors do not have (torch.compile stops at the first
``data_ptr``), and from which the compiler could not tell what a kernel writes.
"""

from __future__ import annotations

import ast
from typing import Callable

import torch
from torch import Tensor

from ._table import ALGORITHMS

__all__ = ["NAMESPACE", "call", "op", "schema"]

NAMESPACE = "optimlab"
_FLOAT, _TENSOR, _STATE = "@float", "@tensor", "@state"


def schema(algorithm: str) -> str:
    """``triton_<algorithm>_``'s schema: every tensor list mutated."""
    lists = ("params", "grads") + ALGORITHMS[algorithm].state
    args = ", ".join(f"Tensor({_alias(i)}!)[] {name}" for i, name in enumerate(lists))
    return (f"({args}, Tensor?[] numbers, str hparams, Tensor? grad_scale=None, "
            "Tensor? found_inf=None) -> ()")


def _alias(i: int) -> str:
    return chr(ord("a") + i)


def op(algorithm: str) -> torch._ops.OpOverload:
    """``torch.ops.optimlab.triton_<algorithm>_.default``."""
    return getattr(getattr(torch.ops, NAMESPACE), f"triton_{algorithm}_").default


def _encode(value, numbers: list):
    """``value`` as a literal, its floats and Tensors appended to ``numbers``."""
    if isinstance(value, Tensor):
        numbers.append(value)
        return (_TENSOR, len(numbers) - 1)
    if isinstance(value, float):
        numbers.append(torch.ones((), dtype=torch.float64) * value)
        return (_FLOAT, len(numbers) - 1)
    if isinstance(value, (tuple, list)):
        return tuple(_encode(v, numbers) for v in value)
    return value


def _decode(value, numbers):
    if isinstance(value, tuple):
        if len(value) == 2 and value[0] in (_FLOAT, _TENSOR):
            t = numbers[value[1]]
            return float(t) if value[0] == _FLOAT else t  # exactly the float the group held
        return tuple(_decode(v, numbers) for v in value)
    return value


def call(algorithm: str, group: dict, params, grads, state: dict, grad_scale, found_inf,
         extra: dict) -> None:
    """Call ``triton_<algorithm>_`` on a param group's update (where ops are traced).
    ``extra``: keyword arguments for the update function (e.g. SGD's new buffers)."""
    numbers: list = []
    entries = [(k, _encode(group.get(k), numbers)) for k in ALGORITHMS[algorithm].hparams]
    lists, shape = [], []
    for k in ALGORITHMS[algorithm].state:
        lst = state.get(k)
        if lst is None:  # absent
            lists.append([])
            shape.append(None)
        elif any(t is None for t in lst):  # partial: the tensors and where they go
            lists.append([t for t in lst if t is not None])
            shape.append(tuple(i for i, t in enumerate(lst) if t is not None))
        else:
            lists.append(lst)
            shape.append(True)
    entries.append((_STATE, tuple(shape)))
    entries.extend((f"@{k}", v) for k, v in extra.items())
    op(algorithm)(params, grads, *lists, numbers, repr(tuple(entries)), grad_scale, found_inf)


def _implementation(algorithm: str, run: Callable) -> Callable:
    keys = ALGORITHMS[algorithm].state

    def impl(params, grads, *rest):
        n = len(keys)
        lists, (numbers, hparams, *amp) = rest[:n], rest[n:]
        grad_scale, found_inf = (list(amp) + [None, None])[:2]  # (trailing defaults may be left out)
        group, extra = {}, {}
        for k, v in ast.literal_eval(hparams):
            if k == _STATE:
                shape = v
            elif k.startswith("@"):
                extra[k[1:]] = v
            else:
                group[k] = _decode(v, numbers)
        if group.get("capturable") and params and params[0].is_cpu:
            # dynamo shows every param group as capturable (torch/_dynamo/variables/
            # optimizer.py): not the user's flag, and CPU params (the interpreter) cannot be
            group["capturable"] = False
        state = {}
        for k, lst, where in zip(keys, lists, shape):
            if where is True:
                state[k] = list(lst)
            elif where is not None:
                full = [None] * len(params)
                for i, t in zip(where, lst):
                    full[i] = t
                state[k] = full
        run(algorithm, group, list(params), list(grads), state, grad_scale, found_inf, **extra)

    return impl


def _fake(*args, **kwargs) -> None:
    """Nothing to compute: every operator only writes its inputs in place."""


def define(run: Callable) -> None:
    """Define every operator, with ``run(algorithm, group, params, grads, state, grad_scale,
    found_inf, **extra)`` (the eager update) as its CPU and CUDA implementation."""
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for algorithm, entry in ALGORITHMS.items():
        if not entry.operator:
            continue
        name = f"triton_{algorithm}_"
        lib.define(name + schema(algorithm))
        torch.library.register_fake(f"{NAMESPACE}::{name}", _fake, lib=lib)
        impl = _implementation(algorithm, run)
        for key in ("CPU", "CUDA"):
            lib.impl(name, impl, key)
    _LIBS.append(lib)  # (a Library object that dies takes its definitions along)


_LIBS: list = []
