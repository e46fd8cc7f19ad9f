"""Small pieces shared by the update functions of several algorithms."""

from __future__ import annotations

import torch
from torch import Tensor

from .optimizer import Optimizer, _to_scalar


def like(x, ref: Tensor):
    """A Tensor hyperparameter moved to ``ref``'s device and dtype (Python numbers pass through)."""
    return x.to(device=ref.device, dtype=ref.dtype) if isinstance(x, Tensor) else x


def scalar(x):
    """A 1-element Tensor hyperparameter as a 0-dim Tensor (numbers pass through)."""
    return _to_scalar(x)


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
