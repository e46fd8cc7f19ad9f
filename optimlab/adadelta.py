"""Adadelta (Zeiler, 2012).

The update rule is in the docstring of :class:`Adadelta`. There is no per-step
scalar: the fused kernels' scalars are the group's constants, computed once by
:func:`adadelta_group_scalars`. The weight-decay helpers it shares with Adamax and ASGD
(``signed_decayed_grads``, ``complex_weight_decay``) are in ``_common.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, complex_weight_decay, foreach_increment, signed_decayed_grads
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _to_scalar, step_tensor, zeros_like
from ._validation import check_lr, check_nonneg

__all__ = ["Adadelta", "adadelta_group_scalars"]


def adadelta_group_scalars(lr, rho, eps, weight_decay):
    """The fused kernels' scalars, in the cpp kernel's argument order and the Triton table's:
    ``(lr, rho, 1 - rho, eps, weight_decay)`` (the kernels step ``p -= lr * delta``). Tensor
    hyperparameters are not cast to the param's dtype (the for-loop passes them as Python
    numbers)."""
    return lr, rho, 1 - rho, eps, weight_decay


@register("adadelta", "forloop")
def _adadelta_forloop(group, params, grads, state):
    lr, rho, eps, wd = _to_scalar(group["lr"]), group["rho"], group["eps"], group["weight_decay"]
    lists = (params, grads, state["square_avg"], state["acc_delta"], state["step"])
    for param, grad, square_avg, acc_delta, step_t in zip(*lists):
        step_t += 1
        grad = -grad if group["maximize"] else grad
        if wd != 0:
            grad = complex_weight_decay(grad, param, wd)
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        delta = acc_delta.add(eps).sqrt_()
        if group["differentiable"]:
            delta = delta.clone()
        delta.div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        param.add_(delta, alpha=-lr)


@register("adadelta", "foreach")
def _adadelta_foreach(group, params, grads, state):
    lr, rho, eps = _to_scalar(group["lr"]), group["rho"], group["eps"]
    lists = [params, grads, state["square_avg"], state["acc_delta"], state["step"]]
    for p, g, v, u, steps in by_device_and_dtype(lists):
        foreach_increment(steps)
        g, _ = signed_decayed_grads(g, p, group["maximize"], group["weight_decay"])
        torch._foreach_mul_(v, rho)
        torch._foreach_addcmul_(v, g, g, value=1 - rho)
        std = torch._foreach_add(v, eps)
        torch._foreach_sqrt_(std)
        deltas = torch._foreach_add(u, eps)
        torch._foreach_sqrt_(deltas)
        torch._foreach_div_(deltas, std)
        torch._foreach_mul_(deltas, g)
        del g, std
        torch._foreach_mul_(u, rho)
        torch._foreach_addcmul_(u, deltas, deltas, value=1 - rho)
        if group["capturable"] and isinstance(lr, Tensor):
            torch._foreach_mul_(deltas, -lr)
            torch._foreach_add_(p, deltas)
        else:
            torch._foreach_add_(p, deltas, alpha=-lr)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class Adadelta(LowPrecisionMixin, Optimizer, torch.optim.Adadelta):
    """Adadelta (Zeiler, 2012).

    A drop-in for ``torch.optim.Adadelta`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g     = g + wd * p
        v     = rho * v + (1 - rho) * g^2                     (square_avg)
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u     = rho * u + (1 - rho) * delta^2                 (acc_delta)
        p     = p - lr * delta

    Args:
        {params}
        lr (float, Tensor, optional): coefficient that scales ``delta`` before it
            is applied to the parameters (default: 1.0)
        rho (float, optional): coefficient of the running averages of the squared
            gradient and of the squared update (default: 0.9)
        eps (float, optional): term added inside the square roots for numerical
            stability (default: 1e-6)
        weight_decay (float, optional): weight decay (L2 penalty) coefficient
            ``wd`` (default: 0)
        {foreach}
        {capturable}
        {maximize}
        {differentiable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Adadelta`` keeps it,
        created at its first step: ``step`` (a 0-dim tensor; on the param's device
        with ``capturable``), ``square_avg`` (v) and ``acc_delta`` (u), shaped like
        ``p``.
    """

    algorithm = "adadelta"
    sparse_grad_error = "Adadelta does not support sparse gradients"
    capturable_xla_forloop = False  # torch's for-loop lists devices without xla here
    setstate_defaults = {
        "foreach": None,
        "maximize": False,
        "differentiable": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonneg(eps=eps, weight_decay=weight_decay)
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            capturable=capturable,
            foreach=foreach,
            differentiable=differentiable,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable, capturable=capturable))
        super().__init__(params, defaults)

    def _init_state(self, group, p):
        return {"step": step_tensor(group, p), "square_avg": zeros_like(p), "acc_delta": zeros_like(p)}

    def _state_keys(self, group):
        return ("step", "square_avg", "acc_delta")
