"""NAdam (Adam with Nesterov momentum); with ``decoupled_weight_decay=True``, NAdamW.

The update rule is in the docstring of :class:`NAdam`. Its scalars are computed in one
place: :func:`nadam_scalars` (per step and param: ``bias_correction2``, ``grad_step``,
``exp_avg_step`` and the advanced ``mu_product``), shared by every backend (with tensors
when capturable or differentiable, as torch does), and :func:`nadam_group_scalars` (the
group's constants, ``1 - beta1`` ...), the fused kernels' scalar arguments in their order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import apply_weight_decay, by_device_and_dtype, foreach_increment
from ._compat import _get_capturable_supported_devices
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _get_scalar_dtype, _get_value, _to_scalar, step_tensor, zeros_like
from ._validation import check_betas, check_lr, check_nonneg

__all__ = ["NAdam", "nadam_scalars", "nadam_group_scalars"]


def nadam_scalars(lr, beta1, beta2, momentum_decay, step, mu_product, tensor_math=False):
    """The step's scalars and the advanced ``mu_product``, without changing ``mu_product``.

    Returns ``(bias_correction2, grad_step, exp_avg_step, new_mu_product)``; the first three
    are the cpp kernel's step-scalar columns and the Triton table's per-tensor columns, in
    that order::

        mu_t = beta1 * (1 - 0.5 * 0.96^(step * momentum_decay)),  mu_t1: the same at step + 1
        new_mu_product = mu_product * mu_t      (in mu_product's dtype, as torch's ``*=``)
        bias_correction2 = 1 - beta2^step
        grad_step = -lr * (1 - mu_t) / (1 - new_mu_product)
        exp_avg_step = -lr * mu_t1 / (1 - new_mu_product * mu_t1)

    ``step`` is a float, or the step tensor when capturable; ``mu_product`` a tensor (the
    state's, or a copy of it in its dtype). With ``tensor_math`` (capturable/differentiable)
    the step sizes are computed from the ``new_mu_product`` tensor itself, else from its
    value: either way after its rounding to the state's dtype, exactly as torch does. The
    caller stores ``new_mu_product`` in the state (``copy_``).
    """
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
    # torch's ``mu_product *= mu``, on a copy: the same rounding (to the state's dtype) and,
    # when differentiable, the same autograd op
    new_mu_product = mu_product.clone() if isinstance(mu_product, Tensor) else mu_product
    new_mu_product *= mu
    prod = new_mu_product if tensor_math else _get_value(new_mu_product)
    grad_step = -lr * (1.0 - mu) / (1.0 - prod)
    exp_avg_step = -lr * mu_next / (1.0 - prod * mu_next)
    return 1 - beta2**step, grad_step, exp_avg_step, new_mu_product


def nadam_group_scalars(lr, beta1, beta2, eps, weight_decay, decoupled):
    """The fused kernels' step-independent scalars, in the order the cpp kernel takes them
    and the Triton scalar table holds them:
    ``(1 - beta1, beta2, 1 - beta2, eps, weight_decay, decay)``, ``decay = 1 - lr * wd``
    with decoupled weight decay, else 1. Tensor hyperparameters are not cast (both kernels
    take them as they are)."""
    decay = 1 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    return 1 - beta1, beta2, 1 - beta2, eps, weight_decay, decay


@register("nadam", "forloop")
def _nadam_forloop(group, params, grads, state):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    eps, md = group["eps"], group["momentum_decay"]
    differentiable, capturable = group["differentiable"], group["capturable"]
    tensor_math = differentiable or capturable
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        exp_avg, exp_avg_sq, step_t = state["exp_avg"][i], state["exp_avg_sq"][i], state["step"][i]
        step_t += 1
        step = step_t if capturable else _get_value(step_t)
        grad = apply_weight_decay(group, lr, param, grad, foreach=False)
        mu_product = state["mu_product"][i]
        bc2, grad_step, exp_avg_step, new_mu_product = nadam_scalars(
            lr, beta1, beta2, md, step, mu_product, tensor_math
        )
        mu_product.copy_(new_mu_product)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.div(bc2).sqrt()
        if tensor_math:  # autograd (and capture) need the scalars as tensor factors
            denom = denom.add(eps)
            param.addcdiv_(grad * grad_step, denom)
            param.addcdiv_(exp_avg * exp_avg_step, denom)
        else:
            denom.add_(eps)
            param.addcdiv_(grad, denom, value=grad_step)
            param.addcdiv_(exp_avg, denom, value=exp_avg_step)


@register("nadam", "foreach")
def _nadam_foreach(group, params, grads, state):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    eps, md, capturable = group["eps"], group["momentum_decay"], group["capturable"]
    lists = [params, grads, state["exp_avg"], state["exp_avg_sq"], state["mu_product"], state["step"]]
    for p, g, m, v, mu_products, steps in by_device_and_dtype(lists):
        if group["maximize"]:
            g = torch._foreach_neg(g)
        foreach_increment(steps)
        g = apply_weight_decay(group, lr, p, g, foreach=True)
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, 1 - beta2)
        denom = torch._foreach_sqrt(v)
        if capturable:
            scalars = [nadam_scalars(lr, beta1, beta2, md, s, mp, True) for s, mp in zip(steps, mu_products)]
            torch._foreach_copy_(mu_products, [new for *_, new in scalars])
            torch._foreach_div_(denom, torch._foreach_sqrt([bc2 for bc2, *_ in scalars]))
            torch._foreach_add_(denom, eps)
            numerator = torch._foreach_mul([gs for _, gs, _, _ in scalars], g)
            torch._foreach_addcmul_(numerator, [ms for _, _, ms, _ in scalars], m)
            torch._foreach_addcdiv_(p, numerator, denom)
        else:
            lr_value = _get_value(lr)
            scalars = [
                nadam_scalars(lr_value, beta1, beta2, md, _get_value(s), mp) for s, mp in zip(steps, mu_products)
            ]
            torch._foreach_copy_(mu_products, [new for *_, new in scalars])
            torch._foreach_div_(denom, [bc2**0.5 for bc2, *_ in scalars])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(p, g, denom, [gs for _, gs, _, _ in scalars])
            torch._foreach_addcdiv_(p, m, denom, [ms for _, _, ms, _ in scalars])


@document(backends=("forloop", "foreach", "cpp", "triton"))
class NAdam(LowPrecisionMixin, Optimizer, torch.optim.NAdam):
    """NAdam (Dozat, 2016); with ``decoupled_weight_decay=True``, NAdamW.

    A drop-in for ``torch.optim.NAdam`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g      = g + wd * p                    (coupled weight decay), or
        p      = p * (1 - lr * wd)             (decoupled)
        mu_t   = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
        mu_t1  = beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
        prod   = prod * mu_t                   (state mu_product, a scalar tensor)
        m      = lerp(m, g, 1 - beta1)
        v      = beta2 * v + (1 - beta2) * g^2
        denom  = sqrt(v / (1 - beta2^t)) + eps
        p      = p + grad_step * g / denom + exp_avg_step * m / denom

    with ``grad_step = -lr * (1 - mu_t) / (1 - prod)`` and
    ``exp_avg_step = -lr * mu_t1 / (1 - prod * mu_t1)``.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 2e-3)
        betas (tuple[float, float], optional): ``(beta1, beta2)``, the coefficients
            of the running averages of the gradient and of its square
            (default: (0.9, 0.999))
        eps (float, optional): term added to the denominator for numerical
            stability (default: 1e-8)
        weight_decay (float, optional): weight decay coefficient ``wd``: an L2
            penalty added to the gradient, or with ``decoupled_weight_decay=True``
            a decay of the params (default: 0)
        momentum_decay (float, optional): the momentum decay ``momentum_decay``
            of ``mu_t`` (default: 4e-3)
        decoupled_weight_decay (bool, optional): decay the params directly
            instead of adding ``wd * p`` to the gradient (NAdamW) (default: False)
        {foreach}
        {maximize}
        {capturable}
        {differentiable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.NAdam`` keeps it,
        created at its first step: ``step`` and ``mu_product`` (0-dim tensors; on
        the param's device with ``capturable``), ``exp_avg`` (m) and
        ``exp_avg_sq`` (v), shaped like ``p``.
    """

    algorithm = "nadam"
    sparse_grad_error = "NAdam does not support sparse gradients"
    setstate_defaults = {
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "decoupled_weight_decay": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
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
        check_nonneg(weight_decay=weight_decay, momentum_decay=momentum_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable, capturable=capturable))
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        # Older checkpoints store ``mu_product`` as a Python number (``step``: the base).
        for group in self.param_groups:
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if "mu_product" in p_state and not torch.is_tensor(p_state["mu_product"]):
                    p_state["mu_product"] = torch.tensor(
                        p_state["mu_product"],
                        dtype=_get_scalar_dtype(),
                        device=p.device if group["capturable"] else None,
                    )

    def _init_state(self, group, p):
        # ``mu_product`` is laid out like ``step`` (on the CPU unless capturable), but starts at 1.
        step = step_tensor(group, p)
        return {
            "step": step,
            "mu_product": torch.ones_like(step),
            "exp_avg": zeros_like(p),
            "exp_avg_sq": zeros_like(p),
        }

    def _state_keys(self, group):
        return ("step", "mu_product", "exp_avg", "exp_avg_sq")

    def _check_capturable(self, params, xla):
        # The base's check, also over ``mu_product``, in torch's words for NAdam (xla: forloop).
        supported = _get_capturable_supported_devices(supports_xla=xla)
        for p in params:
            state = self.state.get(p, {})
            types = {p.device.type} | {state[k].device.type for k in ("mu_product", "step") if k in state}
            if len(types) > 1 or p.device.type not in supported:
                names = "params, mu_products and state_steps" if xla else "params, mu_products, and state_steps"
                raise AssertionError(f"If capturable=True, {names} must be on supported devices: {supported}.")
