"""Rprop: resilient backpropagation (Riedmiller & Braun, 1993).

The update rule is in the docstring of :class:`Rprop`. ``step_size`` starts at
``lr`` (``lr + lr*1j`` for complex params, whose real and imaginary parts are
independent real numbers under ``view_as_real``). The fused kernels' scalars are the
group's constants, as :func:`rprop_group_scalars` orders them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _to_scalar, step_tensor, zeros_like
from ._validation import check_lr

__all__ = ["Rprop", "rprop_group_scalars"]


def rprop_group_scalars(etaminus, etaplus, step_size_min, step_size_max):
    """The fused kernels' scalars, in the cpp kernel's argument order and the Triton table's:
    ``(etaminus, etaplus, step_size_min, step_size_max)``, as the group holds them."""
    return etaminus, etaplus, step_size_min, step_size_max


def _factors(sign: Tensor, etaminus: float, etaplus: float) -> Tensor:
    """sign -> step size factor, as torch does it (NaN stays NaN, values in ``sign``'s dtype)."""
    sign = torch.where(sign.gt(0), etaplus, sign)
    sign = torch.where(sign.lt(0), etaminus, sign)
    return torch.where(sign.eq(0), 1, sign)


@register("rprop", "forloop")
def _rprop_forloop(group, params, grads, state):
    etaminus, etaplus = group["etas"]
    size_min, size_max = group["step_sizes"]
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        prev, step_size = state["prev"][i], state["step_size"][i]
        state["step"][i] += 1
        # autograd needs the old prev intact (it is overwritten below)
        factor = _factors(grad.mul(prev.clone() if group["differentiable"] else prev).sign(), etaminus, etaplus)
        step_size.mul_(factor).clamp_(size_min, size_max)
        grad = torch.where(factor.eq(etaminus), 0, grad)
        param.addcmul_(grad.sign(), step_size, value=-1)
        prev.copy_(grad)


@register("rprop", "foreach")
def _rprop_foreach(group, params, grads, state):
    etaminus, etaplus = group["etas"]
    size_min, size_max = group["step_sizes"]
    lists = [params, grads, state["prev"], state["step_size"], state["step"]]
    for p, g, prev, step_size, steps in by_device_and_dtype(lists):
        foreach_increment(steps)
        signs = torch._foreach_mul(g, prev)
        # prev's memory holds this step's (possibly negated, then masked) grads
        torch._foreach_copy_(prev, g)
        if group["maximize"]:
            torch._foreach_neg_(signs)
            torch._foreach_neg_(prev)
        torch._foreach_sign_(signs)
        factors = [_factors(s, etaminus, etaplus) for s in signs]
        del signs
        torch._foreach_mul_(step_size, factors)
        torch._foreach_clamp_min_(step_size, size_min)
        torch._foreach_clamp_max_(step_size, size_max)
        for gi, f in zip(prev, factors):
            gi.copy_(torch.where(f.eq(etaminus), 0, gi))
        torch._foreach_addcmul_(p, torch._foreach_sign(prev), step_size, value=-1)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class Rprop(LowPrecisionMixin, Optimizer, torch.optim.Rprop):
    """Rprop: resilient backpropagation (Riedmiller & Braun, 1993).

    A drop-in for ``torch.optim.Rprop`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        s         = sign(g * prev)
        factor    = etaplus if s > 0, etaminus if s < 0, 1 if s == 0
        step_size = clamp(step_size * factor, step_size_min, step_size_max)
        g         = 0 where factor == etaminus      (the sign flipped: skip this step)
        p         = p - sign(g) * step_size
        prev      = g

    ``step_size`` starts at ``lr``. Only the sign of the gradient is used.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate: the initial ``step_size``
            (default: 1e-2)
        etas (tuple[float, float], optional): ``(etaminus, etaplus)``, the
            multiplicative decrease and increase factors of ``step_size``
            (default: (0.5, 1.2))
        step_sizes (tuple[float, float], optional): ``(step_size_min,
            step_size_max)``, the bounds of ``step_size`` (default: (1e-6, 50))
        {capturable}
        {foreach}
        {maximize}
        {differentiable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Rprop`` keeps it,
        created at its first step: ``step`` (a 0-dim tensor; on the param's device
        with ``capturable``), ``prev`` (the previous g) and ``step_size``, shaped
        like ``p``.
    """

    algorithm = "rprop"
    capturable_xla_foreach = True  # torch's foreach device list includes xla here
    sparse_grad_error = "Rprop does not support sparse gradients"
    setstate_defaults = {
        "foreach": None,
        "maximize": False,
        "differentiable": False,
        "capturable": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        check_lr(lr)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        defaults = dict(
            lr=lr,
            etas=etas,
            step_sizes=step_sizes,
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
        lr = group["lr"]
        # torch fills from the grad, and a complex lr + lr*1j (float(lr) for a Tensor lr)
        fill = complex(lr, lr) if p.dtype.is_complex else _to_scalar(lr)
        return {"step": step_tensor(group, p), "prev": zeros_like(p), "step_size": torch.full_like(p.grad, fill)}

    def _state_keys(self, group):
        return ("step", "prev", "step_size")

