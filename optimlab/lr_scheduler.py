r"""Learning-rate schedulers: a drop-in for ``torch.optim.lr_scheduler``.

Every scheduler has torch's signature, defaults, attributes and
``state_dict`` layout, and produces torch's learning rates (checkpoints load
both ways). Each class subclasses its torch counterpart (and so
``torch.optim.lr_scheduler.LRScheduler``), so ``isinstance`` checks written
against torch's classes keep working, but all scheduling logic is defined here.

Notation: ``t`` is ``last_epoch`` (the number of ``step()`` calls so far) and
``base_lr`` is the group's ``initial_lr``. Chainable schedulers move the
*current* lr, ``lr_t = lr_{t-1} * f(t) / f(t-1)``, so they compose with other
schedulers (``ChainedScheduler``) and with lr changes made elsewhere;
``step(epoch)`` (deprecated) uses the closed form ``lr_t = base_lr * f(t)``.

A param group whose ``lr`` is a ``torch.Tensor`` (capturable / compiled
training) is updated in place, ``group["lr"].fill_(new)``, so code holding
that tensor sees the new value.
"""

from __future__ import annotations

import math
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from functools import partial, wraps
from typing import Any, Literal, SupportsFloat
from weakref import ref

from torch import Tensor, inf
from torch.optim import lr_scheduler as _torch
from torch.optim.optimizer import Optimizer

__all__ = [
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "SequentialLR",
    "CosineAnnealingLR",
    "ChainedScheduler",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
    "PolynomialLR",
    "LRScheduler",
]

# User-visible messages are torch's, verbatim.
EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being "
    "deprecated where possible. Please use `scheduler.step()` to step the "
    "scheduler. During the deprecation, if epoch is different from None, the "
    "closed form is used instead of the new chainable form, where available. "
    "Please open an issue if you are unable to replicate your use case: "
    "https://github.com/pytorch/pytorch/issues/new/choose."
)
_STEP_OVERRIDDEN_WARNING = (
    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
    "initialization. Please, make sure to call `optimizer.step()` before "
    "`lr_scheduler.step()`. See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
_STEP_ORDER_WARNING = (
    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
    "will result in PyTorch skipping the first value of the learning rate schedule. "
    "See more details at "
    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate"
)
_GET_LR_WARNING = (
    "To get the last learning rate computed by the scheduler, "
    "please use `get_last_lr()`."
)
_NO_MOMENTUM_ERROR = (
    "optimizer must support momentum or beta1 with `cycle_momentum` option enabled"
)


# --------------------------------------------------------------------- helpers
def _clone(x):
    return x.clone() if isinstance(x, Tensor) else x


def _format_param(name: str, optimizer: Optimizer, param) -> list:
    """``param`` broadcast to one (copied) value per param group."""
    if isinstance(param, (list, tuple)):
        if len(param) != len(optimizer.param_groups):
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(param)} values, param_groups has {len(optimizer.param_groups)}."
            )
    else:
        param = [param] * len(optimizer.param_groups)
    return [_clone(p) for p in param]


def _param_groups_val_list(optimizer: Optimizer, key: str) -> list:
    """``[group[key] for group in param_groups]``, tensors cloned (never aliased)."""
    return [_clone(group[key]) for group in optimizer.param_groups]


def _update_param_group_val(group: dict[str, Any], key: str, val) -> None:
    """Set ``group[key] = val``; a tensor entry is filled in place instead."""
    if isinstance(group[key], Tensor):
        if isinstance(val, Tensor) and val.dim() != 0:
            val = val.squeeze()
        group[key].fill_(val)
    else:
        group[key] = val


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _per_group_lambdas(optimizer: Optimizer, lr_lambda) -> list:
    n = len(optimizer.param_groups)
    if not isinstance(lr_lambda, (list, tuple)):
        return [lr_lambda] * n
    if len(lr_lambda) != n:
        raise ValueError(f"Expected {n} lr_lambdas, but got {len(lr_lambda)}")
    return list(lr_lambda)


def _callable_state(fn) -> dict | None:
    """What torch saves of a user callable: a callable object's ``__dict__``;
    nothing (None) for plain functions and lambdas, which cannot be pickled."""
    return None if fn is None or isinstance(fn, types.FunctionType) else fn.__dict__.copy()


def _set_momentum(group: dict[str, Any], use_beta1: bool, value) -> None:
    if use_beta1:
        group["betas"] = (value, *group["betas"][1:])
    else:
        group["momentum"] = value


def _init_momentum(optimizer, use_beta1, base_momentums, max_momentums) -> None:
    for b, m, group in zip(base_momentums, max_momentums, optimizer.param_groups, strict=True):
        _set_momentum(group, use_beta1, m)
        group["max_momentum"] = m
        group["base_momentum"] = b


def _uses_beta1(optimizer: Optimizer) -> bool:
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError(_NO_MOMENTUM_ERROR)
    return "betas" in optimizer.defaults


def _patch_optimizer_step(optimizer: Optimizer) -> None:
    """Wrap ``optimizer.step`` so it records ``optimizer._opt_called = True``.

    Uses torch's marker attribute (``_wrapped_by_lr_sched``), so a step already
    wrapped by a torch scheduler is not wrapped twice, and vice versa. The
    wrapper holds the optimizer weakly (no reference cycle)."""
    step = optimizer.step
    if hasattr(step, "_wrapped_by_lr_sched"):
        return
    opt_ref = ref(optimizer)
    func = getattr(step, "__func__", None)
    if func is not None:
        # Keep the function, never the bound method: the bound method holds the
        # optimizer, and the optimizer holds this wrapper.
        def call(opt, *args, **kwargs):
            return func.__get__(opt, opt.__class__)(*args, **kwargs)
    else:  # step was a plain callable (the user's own), kept as is
        def call(opt, *args, **kwargs):
            return step(*args, **kwargs)

    @wraps(func if func is not None else call)
    def wrapper(*args, **kwargs):
        opt = opt_ref()
        opt._opt_called = True
        return call(opt, *args, **kwargs)

    wrapper._wrapped_by_lr_sched = True
    optimizer.step = wrapper


@contextmanager
def _flag(scheduler, name: str):
    setattr(scheduler, name, True)
    try:
        yield
    finally:
        setattr(scheduler, name, False)


def _enable_get_lr_call(scheduler):
    """Context in which ``get_lr()`` is being called by ``step()`` (no warning)."""
    return _flag(scheduler, "_get_lr_called_within_step")


def _initial_mode(scheduler):
    """Context of the constructor's initial ``step()``."""
    return _flag(scheduler, "_is_initial")


def _warn_get_lr_called_within_step(scheduler, stacklevel: int = 2) -> None:
    """Warn when ``get_lr()`` is called from outside ``step()`` (torch's
    stacklevel: the warning points at ``get_lr``)."""
    if not scheduler._get_lr_called_within_step:
        warnings.warn(_GET_LR_WARNING, UserWarning, stacklevel=stacklevel)


# ------------------------------------------------------------------------ base
class LRScheduler(_torch.LRScheduler):
    r"""Base class of all schedulers (a ``torch.optim.lr_scheduler.LRScheduler``).

    Subclasses implement ``get_lr()``. The constructor records each group's
    ``initial_lr`` (``base_lrs``), wraps ``optimizer.step`` to detect a
    scheduler step before the first optimizer step, and performs the initial
    step (``last_epoch``: -1 -> 0), which sets the group lrs.

    Args:
        optimizer (Optimizer): any ``torch.optim.Optimizer`` (optimlab's included).
        last_epoch (int): index of the last epoch; ``-1`` starts afresh. Other
            values require ``initial_lr`` in every param group (resuming).
    """

    _get_lr_called_within_step: bool = False
    _is_initial: bool = False

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", _clone(group["lr"]))
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming scheduler with last_epoch >= 0.\n"
                        "This typically happens when:\n"
                        "1. You're trying to resume training from a checkpoint but haven't properly loaded the optimizer state\n"
                        "2. You're using last_epoch >= 0 for a fresh training run (not recommended)"
                    )
        self.base_lrs: list[float | Tensor] = _param_groups_val_list(optimizer, "initial_lr")
        self.last_epoch = last_epoch
        _patch_optimizer_step(optimizer)
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and take the constructor's step."""
        self._step_count = 0
        with _initial_mode(self):
            self.step()

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer (a shallow copy of ``__dict__``)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore attributes from ``state_dict()``."""
        self.__dict__.update(state_dict)

    def get_last_lr(self) -> list[float | Tensor]:
        """The lrs set by the last ``step()``, one per group (tensors are copies)."""
        return self._last_lr

    def get_lr(self) -> list[float | Tensor]:
        """The lrs for the current ``last_epoch``; called by ``step()``.
        To read the current lrs use ``get_last_lr()``."""
        raise NotImplementedError

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (``epoch`` is deprecated: jump to it, using the
        closed form where there is one). Call after ``optimizer.step()``."""
        if self._step_count == 1:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(_STEP_OVERRIDDEN_WARNING, UserWarning, stacklevel=2)
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(_STEP_ORDER_WARNING, UserWarning, stacklevel=2)
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        with _enable_get_lr_call(self):
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                closed_form = getattr(self, "_get_closed_form_lr", None)
                values = closed_form() if closed_form is not None else self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            _update_param_group_val(group, "lr", lr)
        self._last_lr: list[float | Tensor] = _param_groups_val_list(self.optimizer, "lr")


class _LRScheduler(LRScheduler, _torch._LRScheduler):
    """Backwards-compatible alias of ``LRScheduler``."""


class _ChainableLR(LRScheduler):
    """Shared body of the multiplicative schedulers.

    A subclass defines ``_ratio(t)`` -- the factor ``f(t) / f(t-1)`` applied to
    the current lr, or None to leave it as is -- and ``_factor(t)``, the closed
    form ``f(t)`` relative to ``base_lr``. Ratios are written the way torch
    writes them, so the sequences are bit-identical to torch's.
    """

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        ratio = self._ratio(self.last_epoch)
        if ratio is None:
            return _param_groups_val_list(self.optimizer, "lr")
        return [group["lr"] * ratio for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]


# --------------------------------------------------------- simple schedulers
class LambdaLR(LRScheduler, _torch.LambdaLR):
    r"""``lr_t = base_lr * lr_lambda(t)``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        lr_lambda (function or list): factor as a function of the epoch, or one
            function per param group.
        last_epoch (int): index of the last epoch. Default: -1.

    ``state_dict`` saves the ``__dict__`` of callable objects; plain functions
    and lambdas are not saved (``None``).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        self.lr_lambdas = _per_group_lambdas(optimizer, lr_lambda)
        super().__init__(optimizer, last_epoch)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["lr_lambdas"] = [_callable_state(fn) for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        lambdas = state.pop("lr_lambdas")
        self.__dict__.update(state)
        for idx, fn_state in enumerate(lambdas):
            if fn_state is not None:
                self.lr_lambdas[idx].__dict__.update(fn_state)

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        return [
            base_lr * lmbda(self.last_epoch)
            for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs, strict=True)
        ]


class MultiplicativeLR(LRScheduler, _torch.MultiplicativeLR):
    r"""``lr_t = lr_{t-1} * lr_lambda(t)`` for ``t >= 1`` (no closed form).

    Args:
        optimizer (Optimizer): wrapped optimizer.
        lr_lambda (function or list): multiplicative factor as a function of the
            epoch, or one function per param group.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self.optimizer = optimizer
        self.lr_lambdas = _per_group_lambdas(optimizer, lr_lambda)
        for fn in self.lr_lambdas:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, but got {type(fn).__name__}")
        super().__init__(optimizer, last_epoch)

    state_dict = LambdaLR.state_dict
    load_state_dict = LambdaLR.load_state_dict

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        return [
            group["lr"] * lmbda(self.last_epoch)
            for lmbda, group in zip(self.lr_lambdas, self.optimizer.param_groups, strict=True)
        ]


class StepLR(_ChainableLR, _torch.StepLR):
    r"""``lr_t = base_lr * gamma ** (t // step_size)``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        step_size (int): period of learning-rate decay.
        gamma (float): multiplicative factor of the decay. Default: 0.1.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self.step_size = step_size
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _ratio(self, t):
        return None if t == 0 or t % self.step_size != 0 else self.gamma

    def _factor(self, t):
        return self.gamma ** (t // self.step_size)


class MultiStepLR(_ChainableLR, _torch.MultiStepLR):
    r"""``lr_t = base_lr * gamma ** (number of milestones <= t)``.

    A milestone listed ``n`` times decays by ``gamma ** n``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        milestones (list): epoch indices (kept as a ``collections.Counter``).
        gamma (float): multiplicative factor of the decay. Default: 0.1.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        milestones: Iterable[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        self.milestones = Counter(milestones)
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _ratio(self, t):
        return self.gamma ** self.milestones[t] if t in self.milestones else None

    def _factor(self, t):
        return self.gamma ** bisect_right(sorted(self.milestones.elements()), t)


class ConstantLR(_ChainableLR, _torch.ConstantLR):
    r"""``lr_t = base_lr * (factor if t < total_iters else 1)``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        factor (float): multiplier in ``[0, 1]`` until the milestone. Default: 1/3.
        total_iters (int): number of steps the factor applies. Default: 5.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: float = 1.0 / 3,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError("Constant multiplicative factor expected to be between 0 and 1.")
        self.factor = factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _ratio(self, t):
        if t == 0:
            return self.factor
        return 1.0 / self.factor if t == self.total_iters else None

    def _factor(self, t):
        return self.factor + (t >= self.total_iters) * (1 - self.factor)


class LinearLR(_ChainableLR, _torch.LinearLR):
    r"""``lr_t = base_lr * (s + (e - s) * min(t, total_iters) / total_iters)``,

    with ``s = start_factor`` and ``e = end_factor``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        start_factor (float): factor at epoch 0, in ``(0, 1]``. Default: 1/3.
        end_factor (float): factor from ``total_iters`` on, in ``[0, 1]``. Default: 1.0.
        total_iters (int): number of steps of the linear change. Default: 5.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or equal to 1."
            )
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError("Ending multiplicative factor expected to be between 0 and 1.")
        self.start_factor = start_factor
        self.end_factor = end_factor
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def _ratio(self, t):
        if t == 0:
            return self.start_factor
        if self._is_initial or t > self.total_iters:
            return None
        delta = self.end_factor - self.start_factor
        return 1.0 + delta / (self.total_iters * self.start_factor + (t - 1) * delta)

    def _factor(self, t):
        delta = self.end_factor - self.start_factor
        return self.start_factor + delta * min(self.total_iters, t) / self.total_iters


class ExponentialLR(_ChainableLR, _torch.ExponentialLR):
    r"""``lr_t = base_lr * gamma ** t``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        gamma (float): multiplicative factor of the decay.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def _ratio(self, t):
        # resuming (last_epoch >= 0): the constructor's step must not decay again
        return None if self._is_initial else self.gamma

    def _factor(self, t):
        return self.gamma**t


class PolynomialLR(_ChainableLR, _torch.PolynomialLR):
    r"""``lr_t = base_lr * (1 - min(t, total_iters) / total_iters) ** power``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        total_iters (int): number of steps of the decay. Default: 5.
        power (float): power of the polynomial. Default: 1.0.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int = 5,
        power: float = 1.0,
        last_epoch: int = -1,
    ) -> None:
        self.total_iters = total_iters
        self.power = power
        super().__init__(optimizer, last_epoch)

    def _ratio(self, t):
        if self._is_initial or t > self.total_iters:
            return None
        n = self.total_iters
        return ((1.0 - t / n) / (1.0 - (t - 1) / n)) ** self.power

    def _factor(self, t):
        return (1.0 - min(self.total_iters, t) / self.total_iters) ** self.power


class CosineAnnealingLR(LRScheduler, _torch.CosineAnnealingLR):
    r"""``lr_t = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``.

    As in torch the steps are taken recursively,
    ``lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max))``
    (restarting from ``eta_min`` by one closed-form increment where the
    denominator vanishes), so other lr changes compose; without them this is
    the closed form above, which continues past ``T_max`` as a cosine wave.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        T_max (int): half period (steps from ``base_lr`` down to ``eta_min``).
        eta_min (float): minimum learning rate. Default: 0.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = T_max
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        groups = self.optimizer.param_groups
        if self._is_initial:
            return _param_groups_val_list(self.optimizer, "lr")
        if self._step_count == 1 and t > 0:
            return self._get_closed_form_lr()
        if (t - 1 - T) % (2 * T) == 0:  # previous lr was eta_min: add the first increment
            return [
                group["lr"] + (base_lr - eta_min) * (1 - math.cos(math.pi / T)) / 2
                for base_lr, group in zip(self.base_lrs, groups, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (group["lr"] - eta_min) + eta_min for group in groups]

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        cos_term = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return [self.eta_min + (base_lr - self.eta_min) * cos_term / 2 for base_lr in self.base_lrs]


# ------------------------------------------------------------------ composites
class _SchedulerList(LRScheduler):
    """Shared validation and ``state_dict`` of schedulers wrapping schedulers."""

    def _check_schedulers(self, optimizer, schedulers) -> None:
        name = self.__class__.__name__
        for idx, scheduler in enumerate(schedulers):
            if not hasattr(scheduler, "optimizer"):
                raise TypeError(f"{name} at index {idx} should have `optimizer` as its attribute.")
            if isinstance(scheduler, _torch.ReduceLROnPlateau):
                raise ValueError(
                    f"{name} does not support `ReduceLROnPlateau` scheduler as it "
                    "requires additional kwargs to be specified when calling `step`, "
                    f"but got one at index {idx} in the given schedulers sequence."
                )
            if optimizer != scheduler.optimizer:
                raise ValueError(
                    f"{name} expects all schedulers to belong to the same optimizer, but "
                    f"got scheduler {scheduler.__class__.__name__} at index {idx} has {scheduler.optimizer}, "
                    f"which is different from {optimizer.__class__.__name__}."
                )

    def state_dict(self) -> dict[str, Any]:
        """Own attributes, with ``_schedulers`` as the list of their state dicts."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_schedulers")}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        children = state.pop("_schedulers")
        self.__dict__.update(state)
        for scheduler, child_state in zip(self._schedulers, children):
            scheduler.load_state_dict(child_state)


class ChainedScheduler(_SchedulerList, _torch.ChainedScheduler):
    r"""Steps every scheduler in ``schedulers`` on each ``step()``, in order,
    so chainable schedules multiply.

    Args:
        schedulers (sequence): schedulers of one optimizer.
        optimizer (Optimizer, optional): the optimizer. Default: the first
            scheduler's.
    """

    def __init__(
        self, schedulers: Sequence[_torch.LRScheduler], optimizer: Optimizer | None = None
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError(
                f"{self.__class__.__name__} expects at least one scheduler to be chained, but got no scheduler."
            )
        optimizer = optimizer or schedulers[0].optimizer
        self._check_schedulers(optimizer, schedulers)
        self._schedulers = schedulers
        self.optimizer = optimizer
        self._last_lr = _param_groups_val_list(self._schedulers[-1].optimizer, "lr")

    def step(self) -> None:  # type: ignore[override]
        """Step each scheduler once."""
        for scheduler in self._schedulers:
            scheduler.step()
        self._last_lr = _param_groups_val_list(self._schedulers[-1].optimizer, "lr")


class SequentialLR(_SchedulerList, _torch.SequentialLR):
    r"""Runs ``schedulers[i]`` for ``milestones[i-1] <= t < milestones[i]``.

    At a milestone the next scheduler starts from epoch 0 (its closed form,
    where it has one, i.e. from its ``base_lr``).

    Args:
        optimizer (Optimizer): wrapped optimizer.
        schedulers (list): the schedulers, one more than milestones.
        milestones (list): epochs at which to switch.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: list[_torch.LRScheduler],
        milestones: list[int],
        last_epoch: int = -1,
    ) -> None:
        if len(schedulers) < 1:
            raise ValueError(
                f"{self.__class__.__name__} expects at least one scheduler, but got no scheduler."
            )
        self._check_schedulers(optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more "
                f"than the number of milestone points, but got number of schedulers {len(schedulers)} and the "
                f"number of milestones to be equal to {len(milestones)}"
            )
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        # Undo the initial steps the wrapped schedulers took, then take only
        # the first one's again.
        for group in self.optimizer.param_groups:
            _update_param_group_val(group, "lr", group["initial_lr"])
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def recursive_undo(self, sched=None) -> None:
        """Decrement ``last_epoch`` of every (nested) wrapped scheduler."""
        sched = self if sched is None else sched
        if hasattr(sched, "_schedulers"):
            for s in sched._schedulers:
                self.recursive_undo(s)
        elif hasattr(sched, "last_epoch"):
            sched.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        """Step the scheduler active at the new epoch (restarting it at a milestone)."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()


# ------------------------------------------------------------------ plateau
class ReduceLROnPlateau(LRScheduler, _torch.ReduceLROnPlateau):
    r"""``lr <- max(lr * factor, min_lr)`` once the metric passed to
    ``step(metrics)`` has not improved for more than ``patience`` epochs.

    "Improved" means ``a < best * (1 - threshold)`` (mode ``min``, ``rel``),
    ``a < best - threshold`` (``min``, ``abs``), ``a > best * (1 + threshold)``
    (``max``, ``rel``) or ``a > best + threshold`` (``max``, ``abs``). After a
    reduction, ``cooldown`` epochs are ignored. Reductions smaller than
    ``eps`` are skipped.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        mode (str): ``"min"`` or ``"max"``. Default: ``"min"``.
        factor (float): reduction factor, < 1. Default: 0.1.
        patience (int): bad epochs tolerated. Default: 10.
        threshold (float): significance threshold. Default: 1e-4.
        threshold_mode (str): ``"rel"`` or ``"abs"``. Default: ``"rel"``.
        cooldown (int): epochs to wait after a reduction. Default: 0.
        min_lr (float or list): lower bound(s) of the lr. Default: 0.
        eps (float): minimal applied decay. Default: 1e-8.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.factor = factor
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"expected {n} min_lrs, got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = list(min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * n
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.last_epoch = 0
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        """Reset the best value, the bad-epoch and the cooldown counters."""
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: SupportsFloat, epoch=None) -> None:  # type: ignore[override]
        """Record ``metrics`` (a float or 0-dim tensor) for one epoch."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")

    def _reduce_lr(self, epoch) -> None:
        n = len(self.optimizer.param_groups)
        if n != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    "The number of param groups in the `optimizer` "
                    f"({n}) differs "
                    f"from when `ReduceLROnPlateau` was initialized "
                    f"({len(self.min_lrs)}), usually due to a new "
                    "param group being added to the optimizer. Please "
                    "modify the `min_lrs` field to match the length "
                    "of the `optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * n
        for group, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                _update_param_group_val(group, "lr", new_lr)

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a, best) -> bool:
        if self.threshold_mode == "rel":
            if self.mode == "min":
                return a < best * (1.0 - self.threshold)
            return a > best * (self.threshold + 1.0)
        if self.mode == "min":
            return a < best - self.threshold
        return a > best + self.threshold

    def _init_is_better(self, mode, threshold, threshold_mode) -> None:
        if mode not in {"min", "max"}:
            raise ValueError("mode " + mode + " is unknown!")
        if threshold_mode not in {"rel", "abs"}:
            raise ValueError("threshold mode " + threshold_mode + " is unknown!")
        self.mode_worse = inf if mode == "min" else -inf
        self.mode = mode
        self.threshold = threshold
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update(state_dict)
        self._init_is_better(
            mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode
        )


# ------------------------------------------------------------------ cyclic
class CyclicLR(LRScheduler, _torch.CyclicLR):
    r"""Cyclical learning rate (CLR), stepped per batch.

    With ``c = floor(1 + t / (up + down))``, ``x = 1 + t / (up + down) - c`` and
    ``h = x / r`` if ``x <= r`` else ``(x - 1) / (r - 1)`` (``r = up / (up + down)``):
    ``lr_t = base_lr + (max_lr - base_lr) * h * scale`` and, if
    ``cycle_momentum``, ``momentum_t = max_momentum - (max_momentum - base_momentum) * h * scale``
    (``betas[0]`` for Adam-like optimizers). ``scale`` is ``1`` (triangular),
    ``1 / 2 ** (c - 1)`` (triangular2), ``gamma ** t`` (exp_range), or
    ``scale_fn(c)`` / ``scale_fn(t)`` per ``scale_mode``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        base_lr (float or list): lower lr boundary (per group).
        max_lr (float or list): upper lr boundary (per group).
        step_size_up (int): iterations in the increasing half. Default: 2000.
        step_size_down (int): iterations in the decreasing half. Default: step_size_up.
        mode (str): ``"triangular"``, ``"triangular2"`` or ``"exp_range"``. Default: triangular.
        gamma (float): base of the exp_range scale. Default: 1.0.
        scale_fn (function): custom scale in ``[0, 1]``; overrides ``mode``. Default: None.
        scale_mode (str): ``"cycle"`` or ``"iterations"`` (argument of ``scale_fn``). Default: cycle.
        cycle_momentum (bool): cycle momentum inversely to the lr. Default: True.
        base_momentum (float or list): lower momentum boundary. Default: 0.8.
        max_momentum (float or list): upper momentum boundary. Default: 0.9.
        last_epoch (int): index of the last batch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        base_lrs = _format_param("base_lr", optimizer, base_lr)
        if last_epoch == -1:
            for lr, group in zip(base_lrs, optimizer.param_groups, strict=True):
                _update_param_group_val(group, "lr", lr)
        self.max_lrs = _format_param("max_lr", optimizer, max_lr)

        step_size_up = float(step_size_up)
        step_size_down = float(step_size_down) if step_size_down is not None else step_size_up
        self.total_size = step_size_up + step_size_down
        self.step_ratio = step_size_up / self.total_size

        if mode not in ["triangular", "triangular2", "exp_range"] and scale_fn is None:
            raise ValueError("mode is invalid and scale_fn is None")
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode
        self._init_scale_fn()

        self.cycle_momentum = cycle_momentum
        if cycle_momentum:
            self.use_beta1 = _uses_beta1(optimizer)
            self.base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            self.max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            if last_epoch == -1:
                _init_momentum(optimizer, self.use_beta1, self.base_momentums, self.max_momentums)

        super().__init__(optimizer, last_epoch)
        self.base_lrs = base_lrs

    def _init_scale_fn(self) -> None:
        if self._scale_fn_custom is not None:
            return
        if self.mode == "triangular":
            self._scale_fn_ref, self.scale_mode = self._triangular_scale_fn, "cycle"
        elif self.mode == "triangular2":
            self._scale_fn_ref, self.scale_mode = self._triangular2_scale_fn, "cycle"
        elif self.mode == "exp_range":
            self._scale_fn_ref = partial(self._exp_range_scale_fn, self.gamma)
            self.scale_mode = "iterations"

    def scale_fn(self, x) -> float:
        """The amplitude scale at ``x`` (cycle number or iteration)."""
        if self._scale_fn_custom is not None:
            return self._scale_fn_custom(x)
        return self._scale_fn_ref(x)

    @staticmethod
    def _triangular_scale_fn(x: float) -> float:
        return 1.0

    @staticmethod
    def _triangular2_scale_fn(x: float) -> float:
        return 1 / (2.0 ** (x - 1))

    @staticmethod
    def _exp_range_scale_fn(gamma: float, x: float) -> float:
        return gamma**x

    def get_lr(self) -> list[float | Tensor]:
        """Lrs at batch ``last_epoch``; also sets the cycled momentum."""
        _warn_get_lr_called_within_step(self)
        t = self.last_epoch
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        h = x / self.step_ratio if x <= self.step_ratio else (x - 1) / (self.step_ratio - 1)

        def amplitude(lo, hi):  # one scale_fn call per value, as torch does
            return (hi - lo) * h * self.scale_fn(cycle if self.scale_mode == "cycle" else t)

        lrs = [lo + amplitude(lo, hi) for lo, hi in zip(self.base_lrs, self.max_lrs, strict=True)]
        if self.cycle_momentum:
            momentums = [
                hi - amplitude(lo, hi)
                for lo, hi in zip(self.base_momentums, self.max_momentums, strict=True)
            ]
            for group, momentum in zip(self.optimizer.param_groups, momentums, strict=True):
                _set_momentum(group, self.use_beta1, momentum)
        return lrs

    def state_dict(self) -> dict[str, Any]:
        """As the base, without ``_scale_fn_ref``; a custom ``scale_fn`` is saved
        as its ``__dict__`` if it is a callable object, else as None."""
        state = super().state_dict()
        state.pop("_scale_fn_ref", None)
        state["_scale_fn_custom"] = _callable_state(state.pop("_scale_fn_custom"))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        fn_state = state.pop("_scale_fn_custom")
        super().load_state_dict(state)
        if fn_state is not None:
            self._scale_fn_custom.__dict__.update(fn_state)
        self._init_scale_fn()


class CosineAnnealingWarmRestarts(LRScheduler, _torch.CosineAnnealingWarmRestarts):
    r"""SGDR: ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``.

    ``T_cur`` counts epochs since the last restart; the period ``T_i`` starts
    at ``T_0`` and is multiplied by ``T_mult`` at each restart. ``step(epoch)``
    accepts fractional epochs (e.g. ``epoch + i / iters_per_epoch``) and
    emits no deprecation warning.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        T_0 (int): epochs until the first restart.
        T_mult (int): period multiplier after each restart. Default: 1.
        eta_min (float): minimum learning rate. Default: 0.
        last_epoch (int): index of the last epoch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_0: int,
        T_mult: int = 1,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if T_0 <= 0 or not isinstance(T_0, int):
            raise ValueError(f"Expected positive integer T_0, but got {T_0}")
        if T_mult < 1 or not isinstance(T_mult, int):
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult}")
        if not isinstance(eta_min, (float, int)):
            raise ValueError(
                f"Expected float or int eta_min, but got {eta_min} of type {type(eta_min)}"
            )
        self.T_0 = T_0
        self.T_i = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.T_cur = last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | Tensor]:
        _warn_get_lr_called_within_step(self)
        cos_term = 1 + math.cos(math.pi * self.T_cur / self.T_i)
        return [self.eta_min + (base_lr - self.eta_min) * cos_term / 2 for base_lr in self.base_lrs]

    def step(self, epoch=None) -> None:
        """Advance one epoch, or jump to (possibly fractional) ``epoch``."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        elif epoch < 0:
            raise ValueError(f"Expected non-negative epoch, but got {epoch}")
        elif epoch < self.T_0:
            self.T_i = self.T_0
            self.T_cur = epoch
        elif self.T_mult == 1:
            self.T_cur = epoch % self.T_0
        else:
            # restarts so far: n = floor(log_{T_mult}(epoch / T_0 * (T_mult - 1) + 1))
            n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
            self.T_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
            self.T_i = self.T_0 * self.T_mult ** (n)
        self.last_epoch = math.floor(epoch)
        with _enable_get_lr_call(self):
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                _update_param_group_val(group, "lr", lr)
        self._last_lr = _param_groups_val_list(self.optimizer, "lr")


_PHASE_KEYS = ("end_step", "start_lr", "end_lr", "start_momentum", "end_momentum")


class OneCycleLR(LRScheduler, _torch.OneCycleLR):
    r"""The 1cycle policy, stepped per batch.

    The lr anneals from ``initial_lr = max_lr / div_factor`` up to ``max_lr``
    over the first ``pct_start * total_steps`` steps, then down to
    ``min_lr = initial_lr / final_div_factor`` (``three_phase``: back down to
    ``initial_lr`` symmetrically, then to ``min_lr``). Within a phase from
    ``a`` to ``b`` at fraction ``p``: ``b + (a - b) * (1 + cos(pi p)) / 2``
    (``"cos"``) or ``a + (b - a) * p`` (``"linear"``). Momentum (or
    ``betas[0]``) moves inversely between ``max_momentum`` and ``base_momentum``.

    Args:
        optimizer (Optimizer): wrapped optimizer.
        max_lr (float or list): peak lr (per group).
        total_steps (int): steps in the cycle; or give ``epochs`` and ``steps_per_epoch``.
        epochs (int): epochs (with ``steps_per_epoch``). Default: None.
        steps_per_epoch (int): steps per epoch. Default: None.
        pct_start (float): fraction of the cycle spent increasing the lr. Default: 0.3.
        anneal_strategy (str): ``"cos"`` or ``"linear"``. Default: ``"cos"``.
        cycle_momentum (bool): cycle momentum inversely to the lr. Default: True.
        base_momentum (float or list): momentum at peak lr. Default: 0.85.
        max_momentum (float or list): momentum at the ends. Default: 0.95.
        div_factor (float): ``initial_lr = max_lr / div_factor``. Default: 25.
        final_div_factor (float): ``min_lr = initial_lr / final_div_factor``. Default: 1e4.
        three_phase (bool): use the three-phase schedule. Default: False.
        last_epoch (int): index of the last batch. Default: -1.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if total_steps is not None:
            if total_steps <= 0 or not isinstance(total_steps, int):
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            self.total_steps = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(
                    f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}"
                )
            self.total_steps = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")

        up_end = float(pct_start * self.total_steps) - 1
        if three_phase:
            phases = [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr",
                 "base_momentum", "max_momentum"),
                (self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            phases = [
                (up_end, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        self._schedule_phases = [dict(zip(_PHASE_KEYS, phase)) for phase in phases]

        if pct_start < 0 or pct_start > 1 or not isinstance(pct_start, float):
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ["cos", "linear"]:
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}"
            )
        self._anneal_func_type = anneal_strategy

        max_lrs = _format_param("max_lr", self.optimizer, max_lr)
        if last_epoch == -1:
            for max_lr_, group in zip(max_lrs, self.optimizer.param_groups):
                group["initial_lr"] = max_lr_ / div_factor
                group["max_lr"] = max_lr_
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = cycle_momentum
        if self.cycle_momentum:
            self.use_beta1 = _uses_beta1(optimizer)
            max_momentums = _format_param("max_momentum", optimizer, max_momentum)
            base_momentums = _format_param("base_momentum", optimizer, base_momentum)
            if last_epoch == -1:
                _init_momentum(optimizer, self.use_beta1, base_momentums, max_momentums)

        super().__init__(optimizer, last_epoch)

    def _anneal_func(self, *args, **kwargs):
        if hasattr(self, "_anneal_func_type"):
            if self._anneal_func_type == "cos":
                return self._annealing_cos(*args, **kwargs)
            if self._anneal_func_type == "linear":
                return self._annealing_linear(*args, **kwargs)
            raise ValueError(f"Unknown _anneal_func_type: {self._anneal_func_type}")
        return self.anneal_func(*args, **kwargs)  # state from old torch versions

    @staticmethod
    def _annealing_cos(start, end, pct):
        """Cosine anneal from ``start`` (pct=0) to ``end`` (pct=1)."""
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    @staticmethod
    def _annealing_linear(start, end, pct):
        """Linear anneal from ``start`` (pct=0) to ``end`` (pct=1)."""
        return (end - start) * pct + start

    def get_lr(self) -> list[float | Tensor]:
        """Lrs at batch ``last_epoch``; also sets the cycled momentum."""
        _warn_get_lr_called_within_step(self)
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total steps is {self.total_steps}"
            )
        start_step = 0.0
        for phase in self._schedule_phases:  # the last phase takes everything left
            if step_num <= phase["end_step"] or phase is self._schedule_phases[-1]:
                break
            start_step = phase["end_step"]
        pct = (step_num - start_step) / (phase["end_step"] - start_step)
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct))
            if self.cycle_momentum:
                momentum = self._anneal_func(
                    group[phase["start_momentum"]], group[phase["end_momentum"]], pct
                )
                _set_momentum(group, self.use_beta1, momentum)
        return lrs
