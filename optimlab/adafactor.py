"""Adafactor (Shazeer & Stern, 2018), as torch.optim.Adafactor implements it.

The update rule is in the docstring of :class:`Adafactor`. ``eps1=None`` is resolved
from the first param updated (the first (device, dtype) bucket's for foreach) and
used for the whole group, as torch. The scalars come from :func:`adafactor_scalars`
and :func:`clip_denominator` (built on :func:`beta2_weight`, :func:`step_size` and
:func:`clip_from_norm`, which the cpp backend calls with the norms its kernel computes),
and the factored estimate from :func:`factored_variance`, shared by every backend.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment
from ._dispatch import register
from ._docs import document
from .optimizer import Optimizer, _to_scalar, step_tensor, zeros_like

__all__ = ["Adafactor"]

_GRAD_IS_SPARSE = operator.attrgetter("grad.is_sparse")


def adafactor_scalars(lr, beta2_decay: float, eps2: float, step: float, param: Tensor):
    """``(one_minus_beta2_t, alpha)`` for step ``step`` (alpha from ``param`` before weight decay)."""
    return beta2_weight(beta2_decay, step), step_size(lr, eps2, step, param.norm(2).item(), param.numel())


def beta2_weight(beta2_decay: float, step: float) -> float:
    """``one_minus_beta2_t = t ** beta2_decay``: the lerp weight of the new mean squares."""
    return step**beta2_decay


def step_size(lr, eps2: float, step: float, param_norm: float, numel: int):
    """``alpha = max(eps2, RMS(p)) * min(lr, 1 / sqrt(t))``, from ``p.norm(2).item()``."""
    rho_t = min(lr, 1 / (step**0.5))
    return max(eps2, param_norm / (numel**0.5)) * rho_t


def clip_denominator(update: Tensor, d: float) -> float:
    """``max(1, RMS(update) / d)``: update clipping."""
    return clip_from_norm(update.norm(2).item(), update.numel(), d)


def clip_from_norm(update_norm: float, numel: int, d: float) -> float:
    """:func:`clip_denominator` from ``update.norm(2).item()``."""
    return max(1.0, update_norm / ((numel**0.5) * d))


def mean_sq(grad: Tensor, dim: int) -> Tensor:
    """``(grad * grad).mean(dim, keepdim=True)`` without materializing ``grad * grad``."""
    return torch.norm(grad, dim=dim, keepdim=True).square_().div_(grad.size(dim))


def factored_variance(row_var: Tensor, col_var: Tensor, eps1: float) -> Tensor:
    """The rank-1 second-moment estimate from the row and column factors (a new tensor)."""
    return (row_var @ col_var).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))


def _eps1(group, first: Tensor) -> float:
    """eps1, or when None the machine epsilon of the first param torch's loop visits."""
    eps1 = group["eps"][0]
    return torch.finfo(first.dtype).eps if eps1 is None else eps1


@register("adafactor", "forloop")
def _adafactor_forloop(group, params, grads, state):
    lr, wd, d, eps1 = _to_scalar(group["lr"]), group["weight_decay"], group["d"], _eps1(group, params[0])
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        step_t = state["step"][i]
        step_t += 1
        one_minus_beta2_t, alpha = adafactor_scalars(lr, group["beta2_decay"], group["eps"][1], step_t.item(), param)
        if wd != 0:
            param.mul_(1 - lr * wd)
        if grad.dim() > 1:
            row_var, col_var = state["row_var"][i], state["col_var"][i]
            row_var.lerp_(mean_sq(grad, -1), one_minus_beta2_t)
            col_var.lerp_(mean_sq(grad, -2), one_minus_beta2_t)
            var_estimate = factored_variance(row_var, col_var, eps1)
        else:
            variance = state["variance"][i]
            variance.lerp_(grad * grad, one_minus_beta2_t)
            var_estimate = variance.clone()
        update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
        param.add_(update, alpha=-alpha / clip_denominator(update, d))


@register("adafactor", "foreach")
def _adafactor_foreach(group, params, grads, state):
    lr, wd, d = _to_scalar(group["lr"]), group["weight_decay"], group["d"]
    lists = [params, grads, state["row_var"], state["col_var"], state["variance"], state["step"]]
    buckets = by_device_and_dtype(lists)
    eps1 = _eps1(group, buckets[0][0][0])  # the first bucket's dtype, for every bucket (as torch)
    for bucket in buckets:
        # torch further splits each bucket into factored (dim > 1) and vector params
        for factored in (True, False):
            keep = [j for j, g in enumerate(bucket[1]) if (g.dim() > 1) == factored]
            if not keep:
                continue
            p, g, row_vars, col_vars, variances, steps = ([lst[j] for j in keep] for lst in bucket)
            if group["maximize"]:
                g = torch._foreach_neg(g)
            foreach_increment(steps)
            scalars = [
                adafactor_scalars(lr, group["beta2_decay"], group["eps"][1], s.item(), x)
                for s, x in zip(steps, p)
            ]
            one_minus_beta2_ts = [b for b, _ in scalars]
            if wd != 0:
                torch._foreach_mul_(p, 1 - lr * wd)
            if factored:
                torch._foreach_lerp_(row_vars, [mean_sq(x, -1) for x in g], one_minus_beta2_ts)
                torch._foreach_lerp_(col_vars, [mean_sq(x, -2) for x in g], one_minus_beta2_ts)
                var_estimates = [factored_variance(r, c, eps1) for r, c in zip(row_vars, col_vars)]
            else:
                torch._foreach_lerp_(variances, torch._foreach_mul(g, g), one_minus_beta2_ts)
                var_estimates = [v.clone() for v in variances]
            torch._foreach_clamp_min_(var_estimates, eps1 * eps1)
            torch._foreach_rsqrt_(var_estimates)
            torch._foreach_mul_(var_estimates, g)
            alphas = [-a / clip_denominator(u, d) for (_, a), u in zip(scalars, var_estimates)]
            torch._foreach_mul_(var_estimates, alphas)
            torch._foreach_add_(p, var_estimates)


@document(backends=("forloop", "foreach", "triton", "cpp"))
class Adafactor(Optimizer, torch.optim.Adafactor):
    """Adafactor (Shazeer & Stern, 2018), with torch's lr and eps1 conventions.

    A drop-in for ``torch.optim.Adafactor`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule at step t (g = -grad if maximize):

        one_minus_beta2_t = t ** beta2_decay
        rho_t = min(lr, 1 / sqrt(t))
        alpha = max(eps2, RMS(p)) * rho_t               (RMS of p before weight decay)
        p     = p * (1 - lr * wd)                       (decoupled weight decay)
        if p.dim() > 1 (factored over the last two dims):
            R = lerp(R, mean(g^2, dim=-1), one_minus_beta2_t)      (row_var)
            C = lerp(C, mean(g^2, dim=-2), one_minus_beta2_t)      (col_var)
            V = (R @ C) / max(mean(R, dim=-2), eps1)
        else:
            V = lerp(V, g^2, one_minus_beta2_t)                    (variance)
        U     = g / sqrt(max(V, eps1^2))
        p     = p - alpha / max(1, RMS(U) / d) * U

    ``eps1=None`` means ``torch.finfo(dtype).eps`` of the first param updated, used
    for the whole group, as in torch.

    Args:
        {params}
        lr (float, Tensor, optional): unlike other optimizers, Adafactor's lr
            caps the relative step size ``rho_t`` (default: 1e-2)
        beta2_decay (float, optional): the decay rate of ``1 - beta2``; must be
            ``<= 0`` (default: -0.8)
        eps (tuple[float | None, float], optional): ``(eps1, eps2)``: ``eps1``
            guards the denominators of the variance estimate (``None``: the
            machine epsilon of the param's dtype), ``eps2`` is the smallest
            ``RMS(p)`` that scales the step (default: (None, 1e-3))
        d (float, optional): clipping threshold of the update's RMS; must be
            ``>= 1`` (default: 1.0)
        weight_decay (float, optional): decoupled weight decay coefficient ``wd``
            (default: 0.0)
        {foreach}
        {maximize}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Adafactor`` keeps it,
        created at its first step: ``step`` (a 0-dim tensor), then for params of 2
        or more dims ``row_var`` (R, shaped like ``p`` with a last dim of 1) and
        ``col_var`` (C, shaped like ``p`` with a second-to-last dim of 1), else
        ``variance`` (V, shaped like ``p``).
    """

    lazy_state = frozenset({"row_var", "col_var", "variance"})  # by the param's shape

    algorithm = "adafactor"
    elementwise = False  # reductions / matrix functions over whole tensors
    complex_as_real = False  # refused in _check_group, as torch refuses them
    setstate_defaults = {"foreach": None}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=eps,
            d=d,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _init_state(self, group, p):
        state = {"step": step_tensor(group, p)}
        grad = p.grad
        if grad.dim() > 1:
            state["row_var"] = grad.new_zeros((*grad.shape[:-1], 1))
            state["col_var"] = grad.new_zeros((*grad.shape[:-2], 1, grad.shape[-1]))
        else:
            state["variance"] = zeros_like(grad)
        return state

    def _state_keys(self, group):
        return ("step", "row_var", "col_var", "variance")

    def _check_group(self, group, params):
        # the usual case in C-level passes (every step; dynamo traces the loop instead)
        if (not torch.compiler.is_compiling() and not any(map(Tensor.is_complex, params))
                and not any(map(_GRAD_IS_SPARSE, params))):
            return
        for p in params:  # torch's order: per param, complex then sparse
            if torch.is_complex(p):
                raise RuntimeError("Adafactor does not support complex parameters")
            if p.grad.is_sparse:
                raise RuntimeError("Adafactor does not support sparse gradients")
