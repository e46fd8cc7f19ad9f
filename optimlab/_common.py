"""Small pieces shared by the update functions of several algorithms."""

from __future__ import annotations

import operator
from itertools import repeat

import torch
from torch import Tensor

from .optimizer import Optimizer, _to_scalar


_DEVICE = operator.attrgetter("device")


def like(x, ref: Tensor):
    """A Tensor hyperparameter moved to ``ref``'s device and dtype (Python numbers pass through)."""
    return x.to(device=ref.device, dtype=ref.dtype) if isinstance(x, Tensor) else x


def kernel_value(x, ref: Tensor):
    """A hyperparameter as a fused kernel takes it: Python numbers pass through; a Tensor is
    cast to ``ref``'s dtype (as the for-loop's ``like`` casts it) and kept on its device when
    that is ``ref``'s or the CPU (one-element host tensors are read, not copied)."""
    if isinstance(x, Tensor):
        x = x.reshape(())
        return x.to(dtype=ref.dtype) if x.device == ref.device or x.is_cpu else x.to(ref)
    return x


def scalar(x):
    """A 1-element Tensor hyperparameter as a 0-dim Tensor (numbers pass through)."""
    return _to_scalar(x)


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


def amp_on_host(grads: list[Tensor], grad_scale: Tensor | None, found_inf: Tensor | None) -> bool:
    """AMP for updates that unscale on the host (SparseAdam, Adafactor, Muon, and any group
    the plan put off its fused backend: ``Optimizer._apply``): True when
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


def foreach_increment(steps: list[Tensor]) -> None:
    """``step += 1`` for a list of step counters (CPU counters take a CPU scalar tensor)."""
    if steps and steps[0].is_cpu and not torch.compiler.is_compiling():
        torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)


def by_device_and_dtype(lists: list[list]) -> list[list[list]]:
    """Split parallel tensor lists into per-(device, dtype) buckets, as foreach ops need."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(lists)
    return [bucket for bucket, _ in grouped.values()]


def signed_decayed_grads(grads, params, maximize: bool, weight_decay: float):
    """Foreach ``g = -grad if maximize``; ``g = g + wd * p``, copying the grads at most once.

    Returns ``(g, owned)``: ``owned`` tells whether ``g`` is a fresh copy the
    caller may update in place (``False``: ``g`` is the grads themselves).
    """
    owned = maximize
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if owned:
            torch._foreach_add_(grads, params, alpha=weight_decay)
        else:
            grads, owned = torch._foreach_add(grads, params, alpha=weight_decay), True
    return grads, owned


def complex_weight_decay(grad: Tensor, param: Tensor, weight_decay: float) -> Tensor:
    """``grad + wd * param`` computed in the dtype the user's param has.

    The base class hands updates ``view_as_real`` views of complex params; the
    for-loops of torch's Adadelta, Adamax (and Adam, Adagrad, RMSprop) apply
    weight decay before viewing as real, and complex ``add(alpha=)`` is not
    bitwise equal to the real one, so complex params decay in complex here.
    """
    if param._base is not None and param._base.is_complex():  # a complex param seen as real
        decayed = torch.view_as_complex(grad).add(torch.view_as_complex(param), alpha=weight_decay)
        return torch.view_as_real(decayed)
    return grad.add(param, alpha=weight_decay)


def apply_weight_decay(group, lr, params, grads, foreach):
    """Weight decay, coupled or decoupled (NAdam, RAdam): apply it (decoupled: to ``params`` in place; else returns new grads)."""
    wd = group["weight_decay"]
    if wd == 0:
        return grads
    if group["decoupled_weight_decay"]:
        if foreach:
            torch._foreach_mul_(params, 1 - lr * wd)
        else:
            params.mul_(1 - lr * wd)
        return grads
    return torch._foreach_add(grads, params, alpha=wd) if foreach else grads.add(params, alpha=wd)
