"""Constructor checks shared by the optimizers, with torch's exact messages.

Each optimizer calls them in torch's order for that optimizer, so the first bad
argument raises the same ValueError as torch.
"""

from __future__ import annotations

from torch import Tensor

_LABELS = {"eps": "epsilon"}


def check_lr(lr) -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not 0.0 <= lr:
        raise ValueError(f"Invalid learning rate: {lr}")


def check_nonneg(**values) -> None:
    """``Invalid <name> value: <v>`` for the first negative value, in argument order."""
    for name, value in values.items():
        if not 0.0 <= value:
            raise ValueError(f"Invalid {_LABELS.get(name, name)} value: {value}")


def check_betas(betas) -> None:
    for i in (0, 1):
        if not 0.0 <= betas[i] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
