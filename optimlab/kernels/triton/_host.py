"""Host-side helpers shared by the per-family update functions (no Triton import)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..._common import foreach_increment


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
    vec = torch.stack([s.reshape(()) for s in steps])
    if not capturable:
        vec = vec.to(torch.float64)
    return vec + 1


def per_tensor(fn, steps, *args):
    """Columns ``fn(*args, step)`` for every step: a list per output for Python steps,
    one vectorised call (device tensors) for a tensor of steps."""
    if isinstance(steps, Tensor):
        out = fn(*args, steps)
        return [o if isinstance(o, Tensor) else torch.full_like(steps, float(o)) for o in out]
    rows = [fn(*args, s) for s in steps]
    return [list(col) for col in zip(*rows)] if rows else []


def commit_steps(steps: list[Tensor], found_inf: Tensor | None) -> None:
    """``step += 1``, undone where AMP found an inf (as torch's fused optimizers do)."""
    if not steps:
        return
    foreach_increment(steps)
    if found_inf is not None:
        fi = found_inf.to(device=steps[0].device, dtype=steps[0].dtype)
        torch._foreach_sub_(steps, [fi] * len(steps))


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
            torch._foreach_div_(dense, grad_scale.to(dense[0].device))
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
