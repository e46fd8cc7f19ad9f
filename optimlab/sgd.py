"""SGD, optionally with (Nesterov) momentum.

The update rule is in the docstring of :class:`SGD`. The momentum buffer is created
lazily on the first step, and only when ``momentum != 0`` (otherwise the state stays
empty, as in torch). Complex params are updated directly (the update is linear, as
torch does it), and sparse grads are accepted: the foreach backend updates a bucket
that holds sparse grads tensor by tensor, as torch does. ``fused=True`` is validated
as torch validates it and runs the cpp (CPU) or triton (CUDA) backend. The fused kernels'
scalars are computed once, by :func:`sgd_group_scalars`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _to_scalar

__all__ = ["SGD", "sgd_group_scalars"]


def sgd_group_scalars(lr, weight_decay, momentum, dampening):
    """The fused kernels' scalars, in the cpp kernel's argument order and the Triton table's:
    ``(lr, weight_decay, momentum, 1 - dampening)`` (the kernels step ``p -= lr * g``).
    Tensor hyperparameters are not cast to the param's dtype (the for-loop passes them as
    ``alpha=``, a Python number)."""
    return lr, weight_decay, momentum, 1 - dampening


def _weight_decayed(grad, param, wd):
    """``grad + wd * param`` (out of place; user grads are never modified)."""
    if isinstance(wd, Tensor) and wd.requires_grad:  # differentiable w.r.t. weight_decay
        return grad.addcmul(param.clone(), wd)
    return grad.add(param, alpha=wd)


@register("sgd", "forloop")
def _sgd_forloop(group, params, grads, state):
    lr, wd, momentum = _to_scalar(group["lr"]), group["weight_decay"], group["momentum"]
    bufs = state.get("momentum_buffer")
    for i, param in enumerate(params):
        grad = -grads[i] if group["maximize"] else grads[i]
        if wd != 0:
            grad = _weight_decayed(grad, param, wd)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                bufs[i] = buf = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        if isinstance(lr, Tensor) and lr.requires_grad:
            param.addcmul_(grad, lr, value=-1)
        else:
            param.add_(grad, alpha=-lr)


@register("sgd", "foreach")
def _sgd_foreach(group, params, grads, state):
    lr, wd, momentum = _to_scalar(group["lr"]), group["weight_decay"], group["momentum"]
    bufs = state.get("momentum_buffer", [None] * len(params))
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, bufs], with_indices=True)
    for (p, g, b), indices in grouped.values():
        has_sparse = any(x.is_sparse for x in g)
        if group["maximize"]:
            g = torch._foreach_neg(g)
        if wd != 0:
            g = torch._foreach_add(g, p, alpha=wd)
        if momentum != 0:
            old = [j for j, x in enumerate(b) if x is not None]
            if old:
                torch._foreach_mul_([b[j] for j in old], momentum)
                torch._foreach_add_([b[j] for j in old], [g[j] for j in old], alpha=1 - group["dampening"])
            for j in (j for j, x in enumerate(b) if x is None):
                b[j] = bufs[indices[j]] = g[j].detach().clone()
            # torch's foreach adds in place here, into p.grad itself when neither
            # maximize nor weight decay copied it; optimlab leaves user grads alone.
            g = torch._foreach_add(g, b, alpha=momentum) if group["nesterov"] else b
        if has_sparse:
            for param, grad in zip(p, g):
                param.add_(grad, alpha=-lr)
        else:
            torch._foreach_add_(p, g, alpha=-lr)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class SGD(LowPrecisionMixin, Optimizer, torch.optim.SGD):
    """Stochastic gradient descent, optionally with momentum (Nesterov or not).

    A drop-in for ``torch.optim.SGD`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element (g = -grad if maximize):

        g   = g + wd * p                       (weight decay)
        b   = g                                (first step: the buffer is a copy of g)
        b   = momentum * b + (1 - dampening) * g   (later steps)
        g   = g + momentum * b  if nesterov else  b
        p   = p - lr * g

    The momentum lines apply only when ``momentum != 0``. As in torch (and unlike
    Sutskever et al.), ``lr`` multiplies the buffer rather than entering it, and
    dampening does not apply to the first step. Sparse gradients are accepted
    (without weight decay), as in torch.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate; a Tensor lr must have one
            element (default: 1e-3)
        momentum (float, optional): momentum factor (default: 0)
        dampening (float, optional): dampening for momentum (default: 0)
        weight_decay (float, Tensor, optional): weight decay (L2 penalty)
            coefficient ``wd`` (default: 0)
        nesterov (bool, optional): Nesterov momentum; needs ``momentum > 0`` and
            ``dampening == 0`` (default: False)
        {maximize}
        {foreach}
        {differentiable}
        {fused}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.SGD`` keeps it:
        ``momentum_buffer`` (shaped like ``p``), created on the param's first step
        and only when ``momentum != 0``; otherwise ``state`` stays empty.
    """

    foreach_refuses_differentiable = False  # torch's foreach SGD runs under autograd
    lazy_state = frozenset({"momentum_buffer"})
    fused_sparse_error = "`_fused_sgd` does not support sparse gradients"

    algorithm = "sgd"
    complex_as_real = False  # the update is linear: torch applies it to complex tensors
    setstate_defaults = {
        "nesterov": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": False,
    }

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable))
        super().__init__(params, defaults)
        if fused:
            self._step_supports_amp_scaling = True
            self._need_device_dtype_check_for_fused = True
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")

    def _init_state(self, group, p):
        return {}  # the momentum buffer is created by the first update

    def _state_keys(self, group):
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _check_group(self, group, params):
        super()._check_group(group, params)  # the low-precision options (LowPrecisionMixin)
        wd = group["weight_decay"]
        if wd != 0:
            sparse = next((p for p in params if p.grad.is_sparse), None)
            if sparse is not None:
                # torch fails inside ``grad.add(param)`` mid-step; raise its exact
                # error before anything changes (the probe is out of place).
                _weight_decayed(sparse.grad, sparse, wd)
