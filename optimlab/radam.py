"""RAdam (rectified Adam); with ``decoupled_weight_decay=True``, RAdamW.

The update rule is in the docstring of :class:`RAdam`. Its scalars are computed in one
place: :func:`radam_scalars` (per step: the bias corrections and the rectification term,
shared by every backend; tensors when capturable, where ``torch.where`` replaces the
``rho_t > 5`` branch), :func:`radam_foreach_steps` (the foreach form's step sizes, from
those) and :func:`radam_group_scalars` (the group's constants), the fused kernels' scalar
arguments in their order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import apply_weight_decay, by_device_and_dtype, foreach_increment
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _get_value, _to_scalar, step_tensor, zeros_like
from ._validation import check_betas, check_lr, check_nonneg

__all__ = ["RAdam", "radam_scalars", "radam_group_scalars"]


def radam_scalars(beta1, beta2, step):
    """The step's scalars, in the order of the cpp kernel's step-scalar columns and the
    Triton table's per-tensor columns: ``(bias_correction1, bc2_sqrt, rect)``::

        bias_correction1 = 1 - beta1^step,  bc2_sqrt = sqrt(1 - beta2^step)
        rho_t = rho_inf - 2 * step * beta2^step / (1 - beta2^step),  rho_inf = 2 / (1 - beta2) - 1
        rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
               if rho_t > 5, else 0 (unrectified)

    Floats, or tensors when ``step`` is a tensor (capturable). (``lr`` is a group scalar of
    the kernels, see :func:`radam_group_scalars`.)
    """
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2

    def rect_of(rho):
        return ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5

    if isinstance(rho_t, Tensor):
        rect = torch.where(rho_t > 5.0, rect_of(rho_t), 0.0)
    else:
        rect = rect_of(rho_t) if rho_t > 5 else 0.0
    return bias_correction1, bias_correction2**0.5, rect


def radam_foreach_steps(lr, bias_correction1, bc2_sqrt, rect):
    """The foreach form's step sizes ``(rect_step, unrect_step)``, from :func:`radam_scalars`:
    the update is ``p += m * (1 / ((sqrt(v) + eps) / rect_step) + unrect_step)``, with
    ``rect_step = -lr * rect * bc2_sqrt / bc1`` and ``unrect_step = -lr / bc1`` only while
    unrectified (else -0.0), associated as torch's foreach (floats, or tensors)."""
    if isinstance(rect, Tensor):  # torch's capturable foreach association (float32 tensors)
        unrectified = torch.where(rect > 0, 0.0, 1.0)
        rect_step = -(bc2_sqrt * lr * rect) / bias_correction1
    else:
        unrectified = 0.0 if rect > 0 else 1.0
        rect_step = bc2_sqrt * (lr * rect / bias_correction1) * -1
    unrect_step = (lr * unrectified / bias_correction1) * -1
    return rect_step, unrect_step


def radam_group_scalars(lr, beta1, beta2, eps, weight_decay, decoupled):
    """The fused kernels' step-independent scalars, in the order the cpp kernel takes them
    and the Triton scalar table holds them:
    ``(lr, 1 - beta1, beta2, 1 - beta2, eps, weight_decay, decay)``, ``decay = 1 - lr * wd``
    with decoupled weight decay, else 1. Tensor hyperparameters are not cast (the for-loop's
    ``m / bc1 * lr`` reads a Tensor lr in the op math type)."""
    decay = 1 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    return lr, 1 - beta1, beta2, 1 - beta2, eps, weight_decay, decay


@register("radam", "forloop")
def _radam_forloop(group, params, grads, state):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    eps, capturable, differentiable = group["eps"], group["capturable"], group["differentiable"]
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        exp_avg, exp_avg_sq, step_t = state["exp_avg"][i], state["exp_avg_sq"][i], state["step"][i]
        step_t += 1
        step = step_t if capturable else _get_value(step_t)
        grad = apply_weight_decay(group, lr, param, grad, foreach=False)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bc1, bc2_sqrt, rect = radam_scalars(beta1, beta2, step)
        bias_corrected_exp_avg = exp_avg / bc1

        def adaptive_lr():
            sqrt = exp_avg_sq.sqrt()
            return bc2_sqrt / (sqrt.add(eps) if differentiable else sqrt.add_(eps))

        if capturable:
            update = torch.where(rect > 0, rect * adaptive_lr(), 1.0)
            param.add_(bias_corrected_exp_avg * lr * update, alpha=-1.0)
        elif rect > 0:
            param.add_(bias_corrected_exp_avg * lr * adaptive_lr() * rect, alpha=-1.0)
        else:
            param.add_(bias_corrected_exp_avg * lr, alpha=-1.0)


@register("radam", "foreach")
def _radam_foreach(group, params, grads, state):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    eps, capturable = group["eps"], group["capturable"]
    lists = [params, grads, state["exp_avg"], state["exp_avg_sq"], state["step"]]
    for p, g, m, v, steps in by_device_and_dtype(lists):
        foreach_increment(steps)
        if group["maximize"]:
            g = torch._foreach_neg(g)
        g = apply_weight_decay(group, lr, p, g, foreach=True)
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        del g
        scalars = [radam_foreach_steps(lr, *radam_scalars(beta1, beta2, s if capturable else _get_value(s)))
                   for s in steps]
        buffer = torch._foreach_sqrt(v)
        torch._foreach_add_(buffer, eps)
        torch._foreach_div_(buffer, [rect_step for rect_step, _ in scalars])
        torch._foreach_reciprocal_(buffer)
        torch._foreach_add_(buffer, [unrect_step for _, unrect_step in scalars])
        # buffer = rect_step / (sqrt(v) + eps) + unrect_step
        torch._foreach_addcmul_(p, m, buffer)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class RAdam(LowPrecisionMixin, Optimizer, torch.optim.RAdam):
    """RAdam (Liu et al., 2019); with ``decoupled_weight_decay=True``, RAdamW.

    A drop-in for ``torch.optim.RAdam`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g      = g + wd * p                    (coupled weight decay), or
        p      = p * (1 - lr * wd)             (decoupled)
        m      = lerp(m, g, 1 - beta1)
        v      = beta2 * v + (1 - beta2) * g^2
        rho_t  = rho_inf - 2 t beta2^t / (1 - beta2^t),   rho_inf = 2 / (1 - beta2) - 1
        if rho_t > 5:   p = p - lr * m / bc1 * rect * sqrt(bc2) / (sqrt(v) + eps)
        else:           p = p - lr * m / bc1

    with ``bc1 = 1 - beta1^t``, ``bc2 = 1 - beta2^t`` and the rectification term
    ``rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``.
    Since rho_t < t, the rectified branch starts at step 6 at the earliest.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 1e-3)
        betas (tuple[float, float], optional): ``(beta1, beta2)``, the coefficients
            of the running averages of the gradient and of its square
            (default: (0.9, 0.999))
        eps (float, optional): term added to the denominator for numerical
            stability (default: 1e-8)
        weight_decay (float, optional): weight decay coefficient ``wd``: an L2
            penalty added to the gradient, or with ``decoupled_weight_decay=True``
            a decay of the params (default: 0)
        decoupled_weight_decay (bool, optional): decay the params directly
            instead of adding ``wd * p`` to the gradient (RAdamW) (default: False)
        {foreach}
        {maximize}
        {capturable}
        {differentiable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.RAdam`` keeps it,
        created at its first step: ``step`` (a 0-dim tensor; on the param's device
        with ``capturable``), ``exp_avg`` (m) and ``exp_avg_sq`` (v), shaped like
        ``p``.
    """

    algorithm = "radam"
    sparse_grad_error = "RAdam does not support sparse gradients"
    setstate_defaults = {
        "foreach": None,
        "maximize": False,
        "differentiable": False,
        "decoupled_weight_decay": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
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
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            decoupled_weight_decay=decoupled_weight_decay,
            differentiable=differentiable,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable, capturable=capturable))
        super().__init__(params, defaults)

    def _init_state(self, group, p):
        return {"step": step_tensor(group, p), "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}

    def _state_keys(self, group):
        return ("step", "exp_avg", "exp_avg_sq")

