"""Host-side helpers shared by the per-family update functions (no Triton import)."""

from __future__ import annotations

import operator
from itertools import repeat

import torch
from torch import Tensor

from ..._common import foreach_increment


_DEVICE = operator.attrgetter("device")


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


def per_device(x: Tensor, tensors: list[Tensor], dtype=None) -> list[Tensor]:
    """``x`` (a one-element tensor) on the device of each of ``tensors`` (one copy per
    device), e.g. ``found_inf`` for step counters spread over several GPUs."""
    dtype = dtype if dtype is not None else x.dtype
    devices = set(map(_DEVICE, tensors))
    if len(devices) == 1:
        return [x.to(device=devices.pop(), dtype=dtype)] * len(tensors)
    copies: dict = {}
    out = []
    for t in tensors:
        d = t.device
        c = copies.get(d)
        if c is None:
            c = copies[d] = x.to(device=d, dtype=dtype)
        out.append(c)
    return out


def on_device(steps: list[Tensor]) -> bool:
    """Step counters live on the accelerator (capturable / fused): use the tensor path."""
    return bool(steps) and not steps[0].is_cpu


def next_steps(steps: list[Tensor], capturable: bool):
    """The step numbers this update runs at (``step + 1``), without touching ``steps``.

    A list of Python floats for CPU counters (as the for-loop's ``_get_value``); a
    1-D tensor on the device otherwise: in the counters' dtype when capturable (as
    torch's capturable for-loop computes), in fp64 otherwise (as ``_get_value``)."""
    if not on_device(steps):
        return [float(s) + 1 for s in steps]
    vec = stack_scalars(steps)
    if not capturable:
        vec = vec.to(torch.float64)
    return vec + 1


def per_tensor(fn, steps, *args):
    """Columns ``fn(*args, step)`` for every step: a list per output for Python steps,
    one vectorised call (device tensors) for a tensor of steps."""
    if isinstance(steps, Tensor):
        out = fn(*args, steps)
        return [o if isinstance(o, Tensor) else torch.full_like(steps, float(o)) for o in out]
    rows, memo = [], {}
    for s in steps:  # usually one step number for the whole group: computed once
        row = memo.get(s)
        if row is None:
            row = memo[s] = fn(*args, s)
        rows.append(row)
    return [list(col) for col in zip(*rows)] if rows else []


def commit_steps(steps: list[Tensor], found_inf: Tensor | None) -> None:
    """``step += 1``, undone where AMP found an inf (as torch's fused optimizers do)."""
    if not steps:
        return
    foreach_increment(steps)
    if found_inf is not None:
        torch._foreach_sub_(steps, per_device(found_inf, steps, steps[0].dtype))


def value(x, ref: Tensor | None = None):
    """A hyperparameter as the kernel's scalar table wants it: Python numbers pass
    through; Tensors are cast like the for-loop casts them (``like(x, ref)``)."""
    if isinstance(x, Tensor):
        x = x.reshape(())
        if ref is not None:
            x = x.to(dtype=ref.dtype) if x.device == ref.device or x.is_cpu else x.to(ref)
    return x


def amp_on_host(grads: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None) -> bool:
    """AMP for updates that unscale on the host (SparseAdam, Adafactor, Muon): True when
    ``found_inf`` says the step is skipped (nothing may change, not even a step counter);
    else the grads are divided by ``grad_scale`` in place (as torch's fused optimizers
    leave them: unscaled), sparse grads through their values."""
    if found_inf is not None and float(found_inf) != 0:
        return True
    if grad_scale is not None:
        dense = [g for g in grads if not g.is_sparse]
        if dense:
            scales = per_device(grad_scale, dense)
            same = all(map(operator.is_, scales, repeat(scales[0])))
            torch._foreach_div_(dense, scales[0] if same else scales)
        for g in grads:
            if g.is_sparse:
                g._values().div_(grad_scale.to(g.device))
    return False


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
