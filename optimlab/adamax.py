"""Adamax (Kingma & Ba, 2014), Adam with the infinity norm.

The update rule is in the docstring of :class:`Adamax`. Its scalars are computed in one
place: :func:`adamax_scalars` (per step: ``step_size = lr / (1 - beta1^t)``, from
:func:`adamax_bias_correction`, shared by every backend; tensors when capturable, where
the for-loop applies the step as ``m / (u * (-bc / lr))`` as torch does) and
:func:`adamax_group_scalars` (the group's constants), the fused kernels' scalar
arguments in their order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment, kernel_value
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from ._common import complex_weight_decay, signed_decayed_grads
from .optimizer import Optimizer, _get_value, _to_scalar, step_tensor, zeros_like
from ._validation import check_betas, check_lr, check_nonneg

__all__ = ["Adamax", "adamax_scalars", "adamax_group_scalars"]


def adamax_bias_correction(beta1, step):
    """``1 - beta1^step`` (a float, or a tensor when ``step`` is one)."""
    return 1 - beta1**step


def adamax_scalars(lr, beta1, step):
    """The step's scalars, in the order of the cpp kernel's step-scalar columns and the
    Triton table's per-tensor columns: ``(step_size,)``, ``step_size = lr / (1 - beta1^step)``
    (positive: the kernels subtract it). Floats, or tensors for a tensor ``step`` or ``lr``."""
    return (lr / adamax_bias_correction(beta1, step),)


def adamax_group_scalars(beta1, beta2, eps, weight_decay, ref: Tensor):
    """The fused kernels' step-independent scalars, in the order the cpp kernel takes them
    and the Triton scalar table holds them: ``(1 - beta1, beta2, eps, weight_decay)``.
    A Tensor ``1 - beta1`` is cast to ``ref``'s dtype after the subtraction, as the
    for-loop's lerp casts its weight; ``beta2`` is not cast (the for-loop's ``mul_`` reads it
    in the op math type)."""
    return kernel_value(1 - beta1, ref), beta2, eps, weight_decay


def _neg_inv_step_size(lr, beta1, step_t: Tensor) -> Tensor:
    """Capturable: ``-(1 - beta1^t) / lr`` as a tensor, i.e. ``-1 / step_size``."""
    return (-adamax_bias_correction(beta1, step_t)).div_(lr)


@register("adamax", "forloop")
def _adamax_forloop(group, params, grads, state):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    eps, wd = group["eps"], group["weight_decay"]
    lists = (params, grads, state["exp_avg"], state["exp_inf"], state["step"])
    for param, grad, exp_avg, exp_inf, step_t in zip(*lists):
        grad = -grad if group["maximize"] else grad
        step_t += 1
        if wd != 0:
            grad = complex_weight_decay(grad, param, wd)
        exp_avg.lerp_(grad, 1 - beta1)
        if group["differentiable"]:  # autograd through max: stack both candidates, amax
            both = torch.cat([exp_inf.mul_(beta2).unsqueeze(0), grad.abs().add_(eps).unsqueeze_(0)], 0)
            exp_inf.copy_(torch.amax(both, 0, keepdim=False))
        else:
            torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(eps), out=exp_inf)
        if group["capturable"]:
            param.addcdiv_(exp_avg, exp_inf * _neg_inv_step_size(lr, beta1, step_t))
        else:
            (step_size,) = adamax_scalars(lr, beta1, _get_value(step_t))
            param.addcdiv_(exp_avg, exp_inf, value=-step_size)


@register("adamax", "foreach")
def _adamax_foreach(group, params, grads, state):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    lists = [params, grads, state["exp_avg"], state["exp_inf"], state["step"]]
    for p, g, m, u, steps in by_device_and_dtype(lists):
        foreach_increment(steps)
        g, owned = signed_decayed_grads(g, p, group["maximize"], group["weight_decay"])
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(u, beta2)
        if owned:
            torch._foreach_abs_(g)
        else:
            g = torch._foreach_abs(g)
        torch._foreach_add_(g, group["eps"])
        torch._foreach_maximum_(u, g)
        del g
        if group["capturable"]:
            denom = torch._foreach_mul(u, [_neg_inv_step_size(lr, beta1, s) for s in steps])
            torch._foreach_addcdiv_(p, m, denom)
        else:
            lr_value = _get_value(lr)
            step_sizes = [-adamax_scalars(lr_value, beta1, _get_value(s))[0] for s in steps]
            torch._foreach_addcdiv_(p, m, u, step_sizes)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class Adamax(LowPrecisionMixin, Optimizer, torch.optim.Adamax):
    """Adamax, the infinity-norm variant of Adam (Kingma & Ba, 2014).

    A drop-in for ``torch.optim.Adamax`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g     = g + wd * p
        m     = lerp(m, g, 1 - beta1)                 (exp_avg)
        u     = max(beta2 * u, |g| + eps)             (exp_inf)
        p     = p - lr / (1 - beta1^t) * m / u

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 2e-3)
        betas (tuple[float, float], optional): ``(beta1, beta2)``, the coefficients
            of the running average of the gradient and of the decay of the
            infinity norm (default: (0.9, 0.999))
        eps (float, optional): term added to the denominator for numerical
            stability (default: 1e-8)
        weight_decay (float, optional): weight decay (L2 penalty) coefficient
            ``wd`` (default: 0)
        {foreach}
        {maximize}
        {differentiable}
        {capturable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Adamax`` keeps it,
        created at its first step: ``step`` (a 0-dim tensor; on the param's device
        with ``capturable``), ``exp_avg`` (m) and ``exp_inf`` (u), shaped like
        ``p``.
    """

    algorithm = "adamax"
    sparse_grad_error = "Adamax does not support sparse gradients"
    setstate_defaults = {
        "foreach": None,
        "maximize": False,
        "differentiable": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        check_lr(lr)
        check_nonneg(eps=eps)
        check_betas(betas)
        check_nonneg(weight_decay=weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable, capturable=capturable))
        super().__init__(params, defaults)

    def _init_state(self, group, p):
        return {"step": step_tensor(group, p), "exp_avg": zeros_like(p), "exp_inf": zeros_like(p)}

    def _state_keys(self, group):
        return ("step", "exp_avg", "exp_inf")
