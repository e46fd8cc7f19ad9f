"""Adagrad.

The update rule is in the docstring of :class:`Adagrad`. Its scalars are computed in one
place: :func:`adagrad_clr` (per step: the decayed learning rate ``clr``), shared by every
backend (the fused kernels take it as :func:`adagrad_scalars`' column), and
:func:`adagrad_group_scalars` (the group's constants), the fused kernels' scalar
arguments in their order. Sparse
grads are coalesced and only the rows they touch are updated (torch's sparse path);
the foreach backend runs a bucket holding sparse grads through the for-loop, as torch
does. Complex params are viewed as real on the dense path only (torch's sparse path
works on the complex values), so this module does the viewing itself.

As in torch, state (``step``, ``sum``) is created in ``__init__`` for every
param, with the constructor's ``initial_accumulator_value`` (also for params
added later, which are initialised lazily from ``defaults``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from .optimizer import Optimizer, _get_value, _to_scalar, step_tensor
from ._validation import check_lr, check_nonneg

__all__ = ["Adagrad", "adagrad_scalars", "adagrad_group_scalars"]


def adagrad_clr(lr, lr_decay, step):
    """The decayed learning rate ``clr`` at step ``step`` (a float, or a Tensor for Tensor lr)."""
    return lr / (1 + (step - 1) * lr_decay)


def adagrad_scalars(lr, lr_decay, step):
    """The step's scalars, in the order of the cpp kernel's step-scalar columns and the
    Triton table's per-tensor columns: ``(clr,)``, ``clr = lr / (1 + (step - 1) * lr_decay)``
    (positive: the kernels subtract ``clr * g / (sqrt(sum) + eps)``)."""
    return (adagrad_clr(lr, lr_decay, step),)


def adagrad_group_scalars(weight_decay, eps):
    """The fused kernels' step-independent scalars, in the order the cpp kernel takes them
    and the Triton scalar table holds them: ``(weight_decay, eps)``. A Tensor
    ``weight_decay`` is not cast (the for-loop's ``add(alpha=wd)`` takes it as a number)."""
    return weight_decay, eps


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if torch.is_complex(t) else t


def _make_sparse(grad, indices, values):
    return torch.sparse_coo_tensor(indices, values, grad.size())


@register("adagrad", "forloop")
def _adagrad_forloop(group, params, grads, state):
    lr, wd, eps = _to_scalar(group["lr"]), group["weight_decay"], group["eps"]
    for param, grad, state_sum, step_t in zip(params, grads, state["sum"], state["step"]):
        step_t += 1
        grad = -grad if group["maximize"] else grad
        if wd != 0:  # sparse grads with weight decay are refused before the step
            grad = grad.add(param, alpha=wd)
        clr = adagrad_clr(lr, group["lr_decay"], _get_value(step_t))
        if grad.is_sparse:
            grad = grad.coalesce()  # the update is non-linear: indices must be unique
            indices, values = grad._indices(), grad._values()
            state_sum.add_(_make_sparse(grad, indices, values.pow(2)))
            std_values = state_sum.sparse_mask(grad)._values().sqrt_().add_(eps)
            param.add_(_make_sparse(grad, indices, values / std_values), alpha=-clr)
        else:
            param, grad, state_sum = _real(param), _real(grad), _real(state_sum)
            state_sum.addcmul_(grad, grad, value=1)
            std = state_sum.sqrt() + eps if group["differentiable"] else state_sum.sqrt().add_(eps)
            param.addcdiv_(grad, std, value=-clr)


@register("adagrad", "foreach")
def _adagrad_foreach(group, params, grads, state):
    lr, wd, eps = _to_scalar(group["lr"]), group["weight_decay"], group["eps"]
    for p, g, sums, steps in by_device_and_dtype([params, grads, state["sum"], state["step"]]):
        if any(x.is_sparse for x in g):
            _adagrad_forloop(group, p, g, {"sum": sums, "step": steps})
            continue
        p, g, sums = ([_real(t) for t in lst] for lst in (p, g, sums))
        if group["maximize"]:
            g = torch._foreach_neg(g)
        foreach_increment(steps)
        if wd != 0:
            g = torch._foreach_add(g, p, alpha=wd)
        minus_clr = [-adagrad_clr(lr, group["lr_decay"], _get_value(s)) for s in steps]
        torch._foreach_addcmul_(sums, g, g, value=1)
        std = torch._foreach_sqrt(sums)
        torch._foreach_add_(std, eps)
        torch._foreach_addcdiv_(p, torch._foreach_mul(g, minus_clr), std)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class Adagrad(LowPrecisionMixin, Optimizer, torch.optim.Adagrad):
    """Adagrad (Duchi et al., 2011).

    A drop-in for ``torch.optim.Adagrad`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g    = g + wd * p                      (weight decay; refused with sparse grads)
        sum  = sum + g^2
        p    = p - clr * g / (sqrt(sum) + eps)

    with ``clr = lr / (1 + (t - 1) * lr_decay)``. Sparse gradients are accepted
    (without weight decay): only the rows they touch are updated, as in torch.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 1e-2)
        lr_decay (float, optional): learning rate decay (default: 0)
        weight_decay (float, optional): weight decay (L2 penalty) coefficient
            ``wd`` (default: 0)
        initial_accumulator_value (float, optional): initial value of the sum of
            squared gradients, ``sum`` (default: 0)
        eps (float, optional): term added to the denominator for numerical
            stability (default: 1e-10)
        {foreach}
        {maximize}
        {differentiable}
        {fused}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.Adagrad`` keeps it,
        created in the constructor (for params added later with
        ``add_param_group``, at their first step): ``step`` (a 0-dim tensor) and
        ``sum`` (shaped like ``p``, filled with ``initial_accumulator_value``).
    """

    fused_sparse_error = "`fused` does not support sparse grad or complex param"

    algorithm = "adagrad"
    complex_as_real = False  # viewed as real by the dense path itself (see module docstring)
    setstate_defaults = {"foreach": None, "maximize": False, "differentiable": False, "fused": None}

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        check_lr(lr)
        check_nonneg(lr_decay=lr_decay, weight_decay=weight_decay)
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {initial_accumulator_value}"
            )
        check_nonneg(eps=eps)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
        )
        defaults.update(low_precision_options(
            kahan_sum, stochastic_rounding, state_dtype, rounding_seed,
            differentiable=differentiable))
        super().__init__(params, defaults)
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
            self._need_device_dtype_check_for_fused = True
            self._step_supports_amp_scaling = True
        for group in self.param_groups:
            for p in group["params"]:
                self._new_state(group, p)

    def _init_state(self, group, p):
        # torch uses the constructor's value, not the group's, here and when lazy
        value = self.defaults["initial_accumulator_value"]
        init = complex(value, value) if torch.is_complex(p) else value
        return {
            "step": step_tensor(group, p),
            "sum": torch.full_like(p, init, memory_format=torch.preserve_format),
        }

    def _state_keys(self, group):
        return ("step", "sum")

    def _check_group(self, group, params):
        super()._check_group(group, params)  # the low-precision options (LowPrecisionMixin)
        if group["weight_decay"] != 0 and any(p.grad.is_sparse for p in params):
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def share_memory(self) -> None:
        """Calls tensor.share_memory_() on the state sum tensors."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["sum"].share_memory_()
