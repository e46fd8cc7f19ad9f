"""RMSprop (Hinton's lecture notes; centered variant from Graves, 2013).

The update rule is in the docstring of :class:`RMSprop`. There is no bias
correction: the fused kernels' scalars are the group's constants, computed once by
:func:`rmsprop_group_scalars`. ``step`` is counted but unused by the update (as in
torch). Complex params are updated as pairs of real numbers (``view_as_real``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _to_scalar, step_tensor, zeros_like
from ._validation import check_lr, check_nonneg

__all__ = ["RMSprop", "rmsprop_group_scalars"]


def rmsprop_group_scalars(lr, alpha, eps, weight_decay, momentum):
    """The fused kernels' scalars, in the cpp kernel's argument order and the Triton table's:
    ``(lr, alpha, 1 - alpha, eps, weight_decay, momentum)`` (the kernels step ``p -= lr *
    ...``). Tensor hyperparameters are not cast to the param's dtype (the for-loop passes
    them as Python numbers)."""
    return lr, alpha, 1 - alpha, eps, weight_decay, momentum


def _keys(momentum, centered) -> tuple[str, ...]:
    """State keys in torch's insertion order."""
    return (
        ("step", "square_avg")
        + (("momentum_buffer",) if momentum > 0 else ())
        + (("grad_avg",) if centered else ())
    )


@register("rmsprop", "forloop")
def _rmsprop_forloop(group, params, grads, state):
    lr, alpha, eps, wd = _to_scalar(group["lr"]), group["alpha"], group["eps"], group["weight_decay"]
    momentum, centered, differentiable = group["momentum"], group["centered"], group["differentiable"]
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        square_avg = state["square_avg"][i]
        state["step"][i] += 1
        if wd != 0:
            grad = grad.add(param, alpha=wd)
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if centered:
            grad_avg = state["grad_avg"][i]
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        # autograd needs sqrt's output intact, hence the out-of-place add when differentiable
        avg = avg.add(eps) if differentiable else avg.add_(eps)
        if momentum > 0:
            buf = state["momentum_buffer"][i]
            buf.mul_(momentum).addcdiv_(grad, avg)
            param.add_(buf, alpha=-lr)
        else:
            param.addcdiv_(grad, avg, value=-lr)


@register("rmsprop", "foreach")
def _rmsprop_foreach(group, params, grads, state):
    lr, alpha, eps, wd = _to_scalar(group["lr"]), group["alpha"], group["eps"], group["weight_decay"]
    momentum, centered = group["momentum"], group["centered"]
    # with capturable, a Tensor lr must stay a tensor (a Scalar argument would call .item())
    tensor_lr = group["capturable"] and isinstance(lr, Tensor)
    # grad_avg / momentum_buffer lists are present only when used (see _state_keys)
    lists = [params, grads] + [state[k] for k in _keys(momentum, centered)]
    for p, g, steps, v, *extra in by_device_and_dtype(lists):
        buf = extra.pop(0) if momentum > 0 else None
        gavg = extra.pop(0) if centered else None
        if group["maximize"]:
            g = torch._foreach_neg(g)
        foreach_increment(steps)
        if wd != 0:
            g = torch._foreach_add(g, p, alpha=wd)
        torch._foreach_mul_(v, alpha)
        torch._foreach_addcmul_(v, g, g, value=1 - alpha)
        if centered:
            torch._foreach_lerp_(gavg, g, 1 - alpha)
            avg = torch._foreach_addcmul(v, gavg, gavg, value=-1)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(v)
        torch._foreach_add_(avg, eps)
        if momentum > 0:
            torch._foreach_mul_(buf, momentum)
            torch._foreach_addcdiv_(buf, g, avg)
            if tensor_lr:
                torch._foreach_add_(p, torch._foreach_mul(buf, -lr))
            else:
                torch._foreach_add_(p, buf, alpha=-lr)
        elif tensor_lr:
            torch._foreach_div_(avg, -lr)
            torch._foreach_addcdiv_(p, g, avg)
        else:
            torch._foreach_addcdiv_(p, g, avg, value=-lr)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class RMSprop(LowPrecisionMixin, Optimizer, torch.optim.RMSprop):
    """RMSprop (Hinton's lecture notes; centered variant from Graves, 2013).

    A drop-in for ``torch.optim.RMSprop`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g    = g + wd * p                       (weight decay, if wd != 0)
        v    = alpha * v + (1 - alpha) * g^2
        gavg = lerp(gavg, g, 1 - alpha)         (centered only)
        avg  = sqrt(v - gavg^2) + eps           (centered), else sqrt(v) + eps
        b    = momentum * b + g / avg           (momentum > 0)
        p    = p - lr * b                       (momentum > 0), else
        p    = p - lr * g / avg

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 1e-2)
        alpha (float, optional): smoothing constant of the running average of the
            squared gradient (default: 0.99)
        eps (float, optional): term added to the denominator for numerical
            stability (default: 1e-8)
        weight_decay (float, optional): weight decay (L2 penalty) coefficient
            ``wd`` (default: 0)
        momentum (float, optional): momentum factor (default: 0)
        centered (bool, optional): divide by an estimate of the variance of the
            gradient (``v - gavg^2``) instead of its second moment (default: False)
        {capturable}
        {foreach}
        {maximize}
        {differentiable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.RMSprop`` keeps it,
        created at its first step: ``step`` (a 0-dim tensor, counted but unused by
        the update; on the param's device with ``capturable``) and ``square_avg``
        (v), then ``momentum_buffer`` (b) when ``momentum > 0`` and ``grad_avg``
        (gavg) when ``centered``, each shaped like ``p``.
    """

    algorithm = "rmsprop"
    capturable_xla_foreach = True  # torch's foreach device list includes xla here
    sparse_grad_error = "RMSprop does not support sparse gradients"
    setstate_defaults = {
        "momentum": 0,
        "centered": False,
        "foreach": None,
        "maximize": False,
        "differentiable": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        check_lr(lr)
        check_nonneg(eps=eps, momentum=momentum, weight_decay=weight_decay, alpha=alpha)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            eps=eps,
            centered=centered,
            weight_decay=weight_decay,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable, capturable=capturable))
        super().__init__(params, defaults)

    def _init_state(self, group, p):
        state = {"step": step_tensor(group, p), "square_avg": zeros_like(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros_like(p)
        if group["centered"]:
            state["grad_avg"] = zeros_like(p)
        return state

    def _state_keys(self, group):
        return _keys(group["momentum"], group["centered"])

