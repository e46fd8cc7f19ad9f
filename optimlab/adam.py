"""Adam and AdamW (AdamW is Adam with ``decoupled_weight_decay=True``).

The update rule is in the docstring of :class:`Adam`. Its scalars are computed in one
place: :func:`adam_scalars` (per step: ``step_size``, ``bc2_sqrt``), shared by every
backend, and :func:`adam_group_scalars` (the group's constants, ``1 - beta1`` ...), the
fused kernels' scalar arguments in their order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment, kernel_value, like
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _get_value, _to_scalar, step_tensor, zeros_like
from ._validation import check_betas, check_lr, check_nonneg

__all__ = ["Adam", "AdamW", "adam_scalars", "adam_group_scalars"]


def adam_scalars(lr, beta1, beta2, step):
    """``(step_size, bc2_sqrt)`` for step ``step`` (floats, or tensors when capturable)."""
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    # a tensor takes sqrt() as torch's tensor paths do (the same value as ** 0.5, and the
    # same gradient as torch's when differentiable)
    bc2_sqrt = bias_correction2.sqrt() if isinstance(bias_correction2, Tensor) else bias_correction2**0.5
    return lr / bias_correction1, bc2_sqrt


def adam_group_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, ref: Tensor):
    """The fused kernels' step-independent scalars, in the order the cpp kernel takes them
    and the Triton scalar table holds them:
    ``(1 - beta1, beta2, 1 - beta2, eps, weight_decay, decay)``, ``decay = 1 - lr * wd``
    with decoupled weight decay, else 1. Tensor betas are cast to ``ref``'s dtype first, as
    the for-loop casts its lerp weight."""
    b1, b2 = kernel_value(beta1, ref), kernel_value(beta2, ref)
    decay = 1 - lr * weight_decay if decoupled and weight_decay != 0 else 1.0
    return 1 - b1, b2, 1 - b2, eps, weight_decay, decay


def _hparams(group):
    beta1, beta2 = (_to_scalar(b) for b in group["betas"])
    return _to_scalar(group["lr"]), beta1, beta2


def _requires_grad(x) -> bool:
    return isinstance(x, Tensor) and x.requires_grad


@register("adam", "forloop")
def _adam_forloop(group, params, grads, state):
    lr, beta1, beta2 = _hparams(group)
    wd, eps = group["weight_decay"], group["eps"]
    amsgrad, differentiable = group["amsgrad"], group["differentiable"]
    tensor_math = group["capturable"] or differentiable
    # differentiable=True with Tensor hyperparameters that require grad: torch's ops for them
    # (a Number argument such as alpha= or value= cannot take such a tensor)
    wd_grad = differentiable and _requires_grad(wd)
    beta2_grad = differentiable and _requires_grad(beta2)
    # autograd of beta ** step keeps step, which the next step increments in place
    step_clone = differentiable and (_requires_grad(beta1) or beta2_grad)
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        exp_avg, exp_avg_sq, step_t = state["exp_avg"][i], state["exp_avg_sq"][i], state["step"][i]
        step_t += 1
        if wd != 0:
            if group["decoupled_weight_decay"]:
                param.mul_(1 - lr * wd)
            elif wd_grad:
                grad = grad.addcmul_(param.clone(), wd)  # in place, as torch
            else:
                grad = grad.add(param, alpha=wd)
        exp_avg.lerp_(grad, 1 - like(beta1, param))
        if beta2_grad:  # v + (g^2 - v) * (1 - beta2): beta2 * v + (1 - beta2) * g^2 with a Tensor weight
            exp_avg_sq.lerp_(torch.square(grad), weight=1 - beta2)
        else:
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if tensor_math:
            step_size, bc2_sqrt = adam_scalars(lr, beta1, beta2, step_t.clone() if step_clone else step_t)
        else:
            step_size, bc2_sqrt = adam_scalars(lr, beta1, beta2, _get_value(step_t))
        if amsgrad:
            max_sq = state["max_exp_avg_sq"][i]
            # autograd needs the old max intact, hence the clone when differentiable
            max_sq.copy_(torch.maximum(max_sq.clone() if differentiable else max_sq, exp_avg_sq))
            exp_avg_sq = max_sq
        if tensor_math:
            # folded into denom, as torch does (keeps autograd through lr/betas identical)
            neg = step_size.neg()
            denom = (exp_avg_sq.sqrt() / (bc2_sqrt * neg)).add_(eps / neg)
            param.addcdiv_(exp_avg.clone() if differentiable else exp_avg, denom)
        else:
            denom = (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)


@register("adam", "foreach")
def _adam_foreach(group, params, grads, state):
    lr, beta1, beta2 = _hparams(group)
    wd, eps, amsgrad = group["weight_decay"], group["eps"], group["amsgrad"]
    lists = [params, grads, state["exp_avg"], state["exp_avg_sq"], state["step"]]
    if amsgrad:
        lists.append(state["max_exp_avg_sq"])
    for p, g, m, v, steps, *vmax in by_device_and_dtype(lists):
        ref = p[0]
        if group["maximize"]:
            g = torch._foreach_neg(g)
        foreach_increment(steps)
        if wd != 0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(p, 1 - lr * wd)
            else:
                g = torch._foreach_add(g, p, alpha=wd)
        torch._foreach_lerp_(m, g, 1 - like(beta1, ref))
        torch._foreach_mul_(v, like(beta2, ref))
        if isinstance(beta2, Tensor):
            torch._foreach_addcmul_(v, torch._foreach_mul(g, 1 - like(beta2, ref)), g)
        else:
            torch._foreach_addcmul_(v, g, g, 1 - beta2)
        del g
        if amsgrad:
            torch._foreach_maximum_(vmax[0], v)
            v = vmax[0]
        denom = torch._foreach_sqrt(v)
        if group["capturable"]:
            scalars = [adam_scalars(lr, beta1, beta2, s) for s in steps]
            torch._foreach_div_(denom, [bc2 for _, bc2 in scalars])
            torch._foreach_add_(denom, eps)
            torch._foreach_div_(denom, [-size for size, _ in scalars])
            torch._foreach_addcdiv_(p, m, denom)
        else:
            lr_value = _get_value(lr)
            scalars = [adam_scalars(lr_value, _get_value(beta1), _get_value(beta2), _get_value(s)) for s in steps]
            torch._foreach_div_(denom, [bc2 for _, bc2 in scalars])
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(p, m, denom, [-size for size, _ in scalars])


def _check_tensor_hparam(name: str, value, foreach, capturable) -> None:
    if isinstance(value, Tensor):
        if foreach and not capturable:
            raise ValueError(
                f"{name} as a Tensor is not supported for capturable=False and foreach=True"
            )
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")


# Arguments Adam and AdamW share (AdamW has no decoupled_weight_decay, and another
# weight_decay default).
_ARGS = {
    "adam_args": """\
lr (float, Tensor, optional): learning rate. A Tensor lr must have one element
    and needs ``capturable=True`` when ``foreach=True`` (default: 1e-3)
betas (tuple[float | Tensor, float | Tensor], optional): ``(beta1, beta2)``, the
    coefficients of the running averages of the gradient and of its square; both
    floats or both one-element Tensors (default: (0.9, 0.999))
eps (float, optional): term added to the denominator for numerical stability
    (default: 1e-8)""",
    "amsgrad": """\
amsgrad (bool, optional): use the AMSGrad variant (Reddi et al., 2018, "On the
    Convergence of Adam and Beyond"): divide by the running maximum of ``v``
    (default: False)""",
}


@document(backends=("forloop", "foreach", "cpp", "triton"), fragments=_ARGS)
class Adam(LowPrecisionMixin, Optimizer, torch.optim.Adam):
    """Adam (Kingma & Ba, 2014); with ``decoupled_weight_decay=True``, AdamW.

    A drop-in for ``torch.optim.Adam`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g     = g + wd * p                     (coupled weight decay), or
        p     = p * (1 - lr * wd)              (decoupled, AdamW)
        m     = lerp(m, g, 1 - beta1)
        v     = beta2 * v + (1 - beta2) * g^2
        vmax  = max(vmax, v)                   (amsgrad; v below is vmax)
        p     = p - step_size * m / (sqrt(v) / bc2_sqrt + eps)

    with ``step_size = lr / (1 - beta1^t)`` and ``bc2_sqrt = sqrt(1 - beta2^t)``.

    Args:
        {params}
        {adam_args}
        weight_decay (float, optional): weight decay coefficient ``wd``: an L2
            penalty added to the gradient, or with ``decoupled_weight_decay=True``
            a decay of the params (default: 0)
        {amsgrad}
        {foreach}
        {maximize}
        {capturable}
        {differentiable}
        {fused}
        decoupled_weight_decay (bool, optional): decay the params directly
            instead of adding ``wd * p`` to the gradient, which makes this
            optimizer AdamW (default: False)
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Adam`` keeps it, created
        at its first step: ``step`` (a 0-dim tensor; on the param's device with
        ``capturable`` or ``fused``), ``exp_avg`` (m) and ``exp_avg_sq`` (v), shaped
        like ``p``, and with ``amsgrad`` ``max_exp_avg_sq`` (vmax).
    """

    algorithm = "adam"
    sparse_grad_error = "Adam does not support sparse gradients, please consider SparseAdam instead"
    setstate_defaults = {
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "decoupled_weight_decay": False,
        "fused": None,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        check_lr(lr)
        check_nonneg(eps=eps)
        check_betas(betas)
        check_nonneg(weight_decay=weight_decay)
        if not (
            (isinstance(betas[0], float) and isinstance(betas[1], float))
            or (isinstance(betas[0], Tensor) and isinstance(betas[1], Tensor))
        ):
            raise ValueError("betas must be either both floats or both Tensors")
        _check_tensor_hparam("betas[0]", betas[0], foreach, capturable)
        _check_tensor_hparam("betas[1]", betas[1], foreach, capturable)
        betas = tuple(map(_to_scalar, betas))
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable, capturable=capturable))
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            self._step_supports_amp_scaling = True
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _init_state(self, group, p):
        state = {"step": step_tensor(group, p), "exp_avg": zeros_like(p), "exp_avg_sq": zeros_like(p)}
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_like(p)
        return state

    def _state_keys(self, group):
        keys = ("step", "exp_avg", "exp_avg_sq")
        return keys + ("max_exp_avg_sq",) if group["amsgrad"] else keys

    def _check_group(self, group, params):
        super()._check_group(group, params)  # the low-precision options (LowPrecisionMixin)
        if group["differentiable"]:
            for p in params:
                step = self.state.get(p, {}).get("step")
                if torch.is_tensor(step) and step.requires_grad:
                    raise RuntimeError(
                        "`requires_grad` is not supported for `step` in differentiable mode"
                    )
        if group["foreach"] and torch.is_tensor(group["lr"]) and not group["capturable"]:
            raise RuntimeError(
                "lr as a Tensor is not supported for capturable=False and foreach=True"
            )


@document(backends=("forloop", "foreach", "cpp", "triton"), fragments=_ARGS)
class AdamW(Adam, torch.optim.AdamW):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    A drop-in for ``torch.optim.AdamW`` (and a subclass of it): same signature,
    defaults (note ``weight_decay=1e-2``), errors and ``state_dict()`` layout.
    It is :class:`Adam` with ``decoupled_weight_decay=True``: the update rule is
    Adam's with ``p = p * (1 - lr * wd)`` before the moments are updated, and
    loading any checkpoint into AdamW keeps its weight decay decoupled.

    Args:
        {params}
        {adam_args}
        weight_decay (float, optional): decoupled weight decay coefficient ``wd``
            (default: 1e-2)
        {amsgrad}
        {maximize}
        {foreach}
        {capturable}
        {differentiable}
        {fused}
        {low_precision}

    {backends}

    State:
        As :class:`Adam`'s: ``step``, ``exp_avg``, ``exp_avg_sq``, and with
        ``amsgrad`` ``max_exp_avg_sq``.
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            kahan_sum=kahan_sum, stochastic_rounding=stochastic_rounding,
            state_dtype=state_dtype, rounding_seed=rounding_seed,
        )

    # Loading any state into AdamW keeps its weight decay decoupled (as torch does).
    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
