r"""Weight averaging (SWA / EMA): a drop-in for ``torch.optim.swa_utils``.

``AveragedModel`` and ``SWALR`` subclass their torch counterparts
(so ``isinstance`` checks against torch's classes hold), with the logic
defined here; results equal torch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from torch.optim import swa_utils as _torch

from ._compat import _get_foreach_kernels_supported_devices
from .lr_scheduler import (
    LRScheduler,
    _format_param,
    _warn_get_lr_called_within_step,
)

__all__ = [
    "AveragedModel",
    "update_bn",
    "SWALR",
    "get_ema_multi_avg_fn",
    "get_swa_multi_avg_fn",
    "get_ema_avg_fn",
    "get_swa_avg_fn",
]

PARAM_LIST = tuple[Tensor, ...] | list[Tensor]


def _is_float_or_complex(t: Tensor) -> bool:
    return torch.is_floating_point(t) or torch.is_complex(t)


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range."
        )


def get_ema_multi_avg_fn(decay=0.999):
    r"""In-place EMA over lists of tensors: ``ema = decay * ema + (1 - decay) * model``.

    Floating/complex lists are updated in one ``torch._foreach_lerp_`` call
    (``ema += (1 - decay) * (model - ema)``); other dtypes tensor by tensor.
    ``decay`` must be in ``[0, 1]``.
    """
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param_list: PARAM_LIST, current_param_list: PARAM_LIST, _) -> None:
        if _is_float_or_complex(ema_param_list[0]):
            torch._foreach_lerp_(ema_param_list, current_param_list, 1 - decay)
        else:
            for p_ema, p_model in zip(ema_param_list, current_param_list, strict=True):
                p_ema.copy_(p_ema * decay + p_model * (1 - decay))

    return ema_update


def get_swa_multi_avg_fn():
    r"""In-place running mean over lists of tensors: ``avg += (model - avg) / (n + 1)``.

    Floating/complex lists use one ``torch._foreach_lerp_`` with weight
    ``1 / (n + 1)``; other dtypes a foreach subtract and add.
    """

    @torch.no_grad()
    def swa_update(
        averaged_param_list: PARAM_LIST,
        current_param_list: PARAM_LIST,
        num_averaged: Tensor | int,
    ) -> None:
        if _is_float_or_complex(averaged_param_list[0]):
            torch._foreach_lerp_(averaged_param_list, current_param_list, 1 / (num_averaged + 1))
            return
        diffs = torch._foreach_sub(current_param_list, averaged_param_list)
        if isinstance(num_averaged, Tensor):
            torch._foreach_addcdiv_(
                averaged_param_list, diffs, [num_averaged + 1] * len(averaged_param_list)
            )
        else:
            torch._foreach_add_(averaged_param_list, diffs, alpha=1.0 / (num_averaged + 1))

    return swa_update


def get_ema_avg_fn(decay=0.999):
    r"""EMA of one tensor: returns ``decay * ema + (1 - decay) * model``."""
    _check_decay(decay)

    @torch.no_grad()
    def ema_update(ema_param: Tensor, current_param: Tensor, num_averaged):
        return decay * ema_param + (1 - decay) * current_param

    return ema_update


def get_swa_avg_fn():
    r"""Running mean of one tensor: returns ``avg + (model - avg) / (n + 1)``."""

    @torch.no_grad()
    def swa_update(averaged_param: Tensor, current_param: Tensor, num_averaged: Tensor | int):
        return averaged_param + (current_param - averaged_param) / (num_averaged + 1)

    return swa_update


@torch.no_grad()
def _swa_update_same_as_single(averaged: list[Tensor], current: list[Tensor], n: Tensor) -> None:
    """``avg <- avg + (model - avg) / (n + 1)``: the arithmetic of
    ``get_swa_avg_fn`` (so bit-identical to torch's per-tensor fallback on
    devices without fast foreach kernels), done as foreach passes for
    floating-point lists."""
    if _is_float_or_complex(averaged[0]):
        diffs = torch._foreach_sub(current, averaged)
        torch._foreach_div_(diffs, n + 1)
        torch._foreach_add_(averaged, diffs)
    else:  # integer buffers: true division, then truncating copy (as torch)
        avg_fn = get_swa_avg_fn()
        for p_avg, p_model in zip(averaged, current, strict=True):
            p_avg.copy_(avg_fn(p_avg, p_model, n))


def _group_by_device_and_dtype(averaged, current) -> dict:
    groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
    for a, m in zip(averaged, current):
        avg_list, cur_list = groups.setdefault((a.device, a.dtype), ([], []))
        avg_list.append(a)
        cur_list.append(m)
    return groups


class AveragedModel(_torch.AveragedModel):
    r"""A copy of ``model`` whose parameters are a running average (SWA / EMA).

    ``update_parameters()`` copies ``model``'s parameters on the first call,
    then averages them in: the equal-weight mean by default,
    ``avg_fn(averaged, current, n_averaged)`` per tensor, or
    ``multi_avg_fn(averaged_list, current_list, n_averaged)`` in place, called
    once per (device, dtype) group (see ``get_ema_multi_avg_fn``).

    Args:
        model (Module): the model to average (deep-copied).
        device (torch.device, optional): where to keep the averaged model.
        avg_fn (callable, optional): per-tensor averaging function.
        multi_avg_fn (callable, optional): in-place multi-tensor averaging function.
        use_buffers (bool): also average buffers (e.g. BatchNorm statistics);
            otherwise buffers are copied from ``model``. Default: False.

    ``avg_fn``/``multi_avg_fn`` are not part of the ``state_dict``.
    """

    n_averaged: Tensor

    def __init__(
        self,
        model: Module,
        device: int | torch.device | None = None,
        avg_fn: Callable[[Tensor, Tensor, Tensor | int], Tensor] | None = None,
        multi_avg_fn: Callable[[PARAM_LIST, PARAM_LIST, Tensor | int], None] | None = None,
        use_buffers=False,
    ) -> None:
        Module.__init__(self)
        if avg_fn is not None and multi_avg_fn is not None:
            raise AssertionError("Only one of avg_fn and multi_avg_fn should be provided")
        self.module = deepcopy(model)
        if device is not None:
            self.module = self.module.to(device)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.avg_fn = avg_fn
        self.multi_avg_fn = multi_avg_fn
        self.use_buffers = use_buffers

    def forward(self, *args, **kwargs):
        """Run the averaged module."""
        return self.module(*args, **kwargs)

    def update_parameters(self, model: Module) -> None:
        """Average ``model``'s current parameters (and buffers if ``use_buffers``) in."""
        if self.use_buffers:
            averaged = [*self.module.parameters(), *self.module.buffers()]
            current = [*model.parameters(), *model.buffers()]
        else:
            averaged, current = list(self.parameters()), list(model.parameters())
        averaged = [a.detach() for a in averaged]
        current = [m.detach().to(a.device) for a, m in zip(averaged, current)]
        averaged = averaged[: len(current)]

        if self.n_averaged == 0:
            for a, m in zip(averaged, current):
                a.copy_(m)
        elif self.avg_fn is not None:
            for a, m in zip(averaged, current):
                a.copy_(self.avg_fn(a, m, self.n_averaged.to(a.device)))
        else:
            for (device, _), (avg_list, cur_list) in _group_by_device_and_dtype(
                averaged, current
            ).items():
                n = self.n_averaged.to(device)
                if self.multi_avg_fn is not None:
                    self.multi_avg_fn(avg_list, cur_list, n)
                elif device.type in _get_foreach_kernels_supported_devices():
                    get_swa_multi_avg_fn()(avg_list, cur_list, n)
                else:
                    _swa_update_same_as_single(avg_list, cur_list, n)

        if not self.use_buffers:  # keep buffers in sync with the source model
            for b_swa, b_model in zip(self.module.buffers(), model.buffers(), strict=True):
                b_swa.detach().copy_(b_model.detach().to(b_swa.device))
        self.n_averaged += 1


@torch.no_grad()
def update_bn(
    loader: Iterable[Any], model: Module, device: int | torch.device | None = None
) -> None:
    r"""Recompute BatchNorm ``running_mean``/``running_var`` with one pass over ``loader``.

    Statistics are reset and accumulated as a cumulative average
    (``momentum=None``) in train mode; momenta and the train/eval mode are
    restored afterwards. A batch is a tensor or a list/tuple whose first
    element is the input; ``device``, if given, is where inputs are moved.
    """
    momenta = {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            momenta[module] = module.momentum
    if not momenta:
        return
    was_training = model.training
    model.train()
    for module in momenta:
        module.momentum = None
    for input in loader:
        if isinstance(input, (list, tuple)):
            input = input[0]
        if device is not None:
            input = input.to(device)
        model(input)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


class SWALR(LRScheduler, _torch.SWALR):
    r"""Anneals each group's lr to ``swa_lr`` over ``anneal_epochs`` epochs, then holds it.

    With ``a(t) = anneal(min(1, t / anneal_epochs))`` (``"cos"``:
    ``(1 - cos(pi x)) / 2``, ``"linear"``: ``x``), the lr after ``t`` steps is
    ``swa_lr * a(t) + lr_0 * (1 - a(t))``, where ``lr_0`` is recovered from the
    current lr each step, so other lr changes compose.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        swa_lr (float or list): target lr (per group).
        anneal_epochs (int): epochs of the annealing phase, >= 0. Default: 10.
        anneal_strategy (str): ``"cos"`` or ``"linear"``. Default: ``"cos"``.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer,
        swa_lr: float,
        anneal_epochs=10,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        last_epoch=-1,
    ) -> None:
        swa_lrs = _format_param("swa_lr", optimizer, swa_lr)
        for lr, group in zip(swa_lrs, optimizer.param_groups, strict=True):
            group["swa_lr"] = lr
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                "anneal_strategy must be one of 'cos' or 'linear', "
                f"instead got {anneal_strategy}"
            )
        self._set_anneal_func(anneal_strategy)
        if not isinstance(anneal_epochs, int) or anneal_epochs < 0:
            raise ValueError(f"anneal_epochs must be equal or greater than 0, got {anneal_epochs}")
        self.anneal_epochs = anneal_epochs
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _linear_anneal(t):
        return t

    @staticmethod
    def _cosine_anneal(t):
        return (1 - math.cos(math.pi * t)) / 2

    @staticmethod
    def _get_initial_lr(lr, swa_lr, alpha):
        """Invert ``lr = swa_lr * alpha + lr_0 * (1 - alpha)`` for ``lr_0``."""
        if alpha == 1:
            return swa_lr
        return (lr - alpha * swa_lr) / (1 - alpha)

    def get_lr(self):
        # torch warns here with the caller of get_lr as the location
        _warn_get_lr_called_within_step(self, stacklevel=3)
        step = self._step_count - 1
        if self.anneal_epochs == 0:
            step = max(1, step)
        prev_alpha = self.anneal_func(max(0, min(1, (step - 1) / max(1, self.anneal_epochs))))
        alpha = self.anneal_func(max(0, min(1, step / max(1, self.anneal_epochs))))
        groups = self.optimizer.param_groups
        return [
            group["swa_lr"] * alpha
            + self._get_initial_lr(group["lr"], group["swa_lr"], prev_alpha) * (1 - alpha)
            for group in groups
        ]

    def _set_anneal_func(self, anneal_strategy: Literal["cos", "linear"]) -> None:
        self._anneal_strategy = anneal_strategy
        self.anneal_func = self._cosine_anneal if anneal_strategy == "cos" else self._linear_anneal

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer and ``anneal_func``."""
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "anneal_func")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._set_anneal_func(self._anneal_strategy)
