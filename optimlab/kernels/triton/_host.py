"""Host-side helpers shared by the per-family update functions (no Triton import)."""

from __future__ import annotations

import math
import operator
from itertools import repeat

import torch
from torch import Tensor

from ..._common import amp_on_host, foreach_increment, kernel_value, per_device  # noqa: F401 (shared)


_DEVICE = operator.attrgetter("device")
_DTYPE = operator.attrgetter("dtype")
_ITEM = Tensor.item


class Same:
    """A per-tensor column of the scalar table holding one value for every tensor (a
    Python number or a one-element Tensor): stored once, not once per tensor."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Same({self.value!r})"


def each(column, n: int) -> list:
    """A column as a list of ``n`` values (:class:`Same`: its value ``n`` times)."""
    return [column.value] * n if isinstance(column, Same) else column


def read(tensors: list[Tensor]) -> list:
    """The values of one-element host tensors (``.item()``, as the for-loop's ``_get_value``),
    in one C-level pass."""
    return list(map(_ITEM, tensors))


def common(values: list, signed_zero: bool = False):
    """The value every element of ``values`` equals, else None (never NaN; with
    ``signed_zero``, a zero only when every zero has the same sign)."""
    if not values:
        return None
    v = values[0]
    if values.count(v) != len(values):  # C-level; a NaN equals only itself (the same object)
        return None
    if signed_zero and v == 0 and len(set(map(math.copysign, repeat(1.0), values))) != 1:
        return None
    return v


def capturing() -> bool:
    """True while the current CUDA stream is capturing a CUDA graph (False without CUDA:
    no stream can capture before CUDA is initialized)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def stack_scalars(tensors: list[Tensor]) -> Tensor:
    """1-D stack of one-element tensors, on the first one's device (a group may span
    several devices: the others are copied there, device to device)."""
    if len(set(map(_DEVICE, tensors))) > 1:
        dev0 = tensors[0].device
        return torch.stack([t.reshape(()).to(dev0) for t in tensors])
    try:  # one stack of the tensors as they are (0-dim, as torch keeps step counters),
        # reshaped once: no Python-level call per tensor
        return torch.stack(tensors).reshape(len(tensors))
    except RuntimeError:  # one-element tensors of different shapes
        return torch.stack([t.reshape(()) for t in tensors])


def on_device(steps: list[Tensor]) -> bool:
    """Step counters live on the accelerator (capturable / fused): use the tensor path."""
    return bool(steps) and not steps[0].is_cpu


def next_steps(steps: list[Tensor], capturable: bool):
    """The step numbers this update runs at (``step + 1``), without touching ``steps``.

    For CPU counters Python floats (as the for-loop's ``_get_value``): one float when
    every counter holds the same value (the usual case: the columns that depend on it are
    then computed once, and :func:`commit_steps` writes it), else a list; a 1-D tensor on
    the device otherwise: in the counters' dtype when capturable (as torch's capturable
    for-loop computes), in fp64 otherwise (as ``_get_value``)."""
    if not on_device(steps):
        values = read(steps)
        v = common(values)
        return [float(s) + 1 for s in values] if v is None else float(v) + 1
    vec = stack_scalars(steps)
    if not capturable:
        vec = vec.to(torch.float64)
    return vec + 1


def per_tensor(fn, steps, *args):
    """Columns ``fn(*args, step)`` for every step: a list per output for Python steps
    (:class:`Same` columns for one step number, computed once), one vectorised call
    (device tensors) for a tensor of steps."""
    if isinstance(steps, Tensor):
        out = fn(*args, steps)
        return [o if isinstance(o, Tensor) else torch.full_like(steps, float(o)) for o in out]
    if not isinstance(steps, list):
        return [Same(o) for o in fn(*args, steps)]
    rows, memo = [], {}
    for s in steps:  # usually one step number for the whole group: computed once
        row = memo.get(s)
        if row is None:
            row = memo[s] = fn(*args, s)
        rows.append(row)
    return [list(col) for col in zip(*rows)] if rows else []


def commit_steps(steps: list[Tensor], found_inf: Tensor | None, nxt=None, held: bool = False):
    """``step += 1``, or ``step += 1 - found_inf`` with AMP: one write, nothing undone (a step
    ``found_inf`` skips leaves the counters as they were; the C++ kernels' protocol too).

    ``nxt``: what :func:`next_steps` returned for these counters. CPU counters that all
    hold one value ``v`` (read then, or here) are written ``v + 1`` with one foreach copy
    of a single fp64 value, rounded to each counter's dtype exactly as ``step += 1``
    rounds it (the sum is exact in fp64), several times cheaper than a foreach add on
    CPU scalars, which dispatches a full binary op per counter. With ``held``, returns the
    value every counter then holds (as ``.item()`` reads it) when that is known without
    reading them (counters of one dtype written so), else None."""
    if not steps:
        return None
    if found_inf is None and not on_device(steps):
        if nxt is None:
            v = common(read(steps))
            nxt = None if v is None else float(v) + 1
        if isinstance(nxt, float):
            src = torch.full((), nxt, dtype=torch.float64)
            torch._foreach_copy_(steps, [src] * len(steps))
            if not held:
                return None
            dtypes = set(map(_DTYPE, steps))
            return src.to(dtypes.pop()).item() if len(dtypes) == 1 else None
    if found_inf is None:
        foreach_increment(steps)
    else:  # (found_inf is 0 or 1: the sum is exact)
        torch._foreach_add_(steps, per_device(1 - found_inf, steps, steps[0].dtype))
    return None


def value(x, ref: Tensor | None = None):
    """A hyperparameter as the kernel's scalar table wants it: Python numbers pass
    through; Tensors are cast like the for-loop casts them (``_common.kernel_value``)."""
    if isinstance(x, Tensor):
        return x.reshape(()) if ref is None else kernel_value(x, ref)
    return x


def contiguous_stage(tensors: list[Tensor]) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
    """Contiguous versions of ``tensors`` (the same tensor when already contiguous) and the
    ``(original, copy)`` pairs to write back with :func:`write_back`."""
    out, staged = [], []
    for t in tensors:
        if t is None or t.is_contiguous():
            out.append(t)
        else:
            c = t.contiguous()
            staged.append((t, c))
            out.append(c)
    return out, staged


def write_back(staged: list[tuple[Tensor, Tensor]]) -> None:
    for orig, copy in staged:
        orig.copy_(copy)


def fresh_state(tensors: list | None, grads: list[Tensor], found_inf: Tensor | None) -> tuple[int, ...] | None:
    """Make the missing tensors of a state list created on its first step (SGD's momentum
    buffers), uninitialised (the kernel writes them, told which are new), and return their
    indices; None when AMP skips the step (``found_inf`` nonzero): a skipped step creates
    nothing, as torch's for-loop (which GradScaler does not call then) creates nothing.
    Reads ``found_inf`` on the host (one sync) on such steps only. Runs before the operator
    (traced: the new tensors are the graph's)."""
    if not tensors:  # absent (SGD without momentum)
        return ()
    if torch.compiler.is_compiling():  # (dynamo graph-breaks on map of operator.is_)
        missing = [i for i, t in enumerate(tensors) if t is None]
    else:
        missing = ([i for i, t in enumerate(tensors) if t is None]
                   if any(map(operator.is_, tensors, repeat(None))) else [])
    if not missing:
        return ()
    if found_inf is not None:
        if capturing():
            from ._launcher import CaptureError

            raise CaptureError(
                "optimlab sgd (triton backend): a CUDA graph is being captured with "
                "GradScaler's found_inf, and some momentum buffers do not exist yet: "
                "whether they are created depends on found_inf, which capture cannot "
                "read. Run one step outside capture first. Nothing was updated.")
        if float(found_inf) != 0:
            return None
    for i in missing:
        tensors[i] = torch.empty_like(grads[i], memory_format=torch.preserve_format)
    return tuple(missing)
