"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, 1992).

The update rule is in the docstring of :class:`ASGD`. ``eta`` and ``mu`` are
per-param 0-dim tensors of the default scalar dtype on the param's device, as are
``step``. They come from :func:`asgd_eta` and :func:`asgd_mu`, shared by every
backend (the fused kernels' group constants: :func:`asgd_group_scalars`). Mirroring
torch, the for-loop evaluates them on Python floats (``t`` taken with ``.item()``) and
stores them as :func:`asgd_next` does (through
``torch.as_tensor``: rounded to the default dtype, even into the float64 state
``load_state_dict`` makes for float64 params); the fused backends store exactly these
values. The foreach backend evaluates ``eta`` on the step tensor (in its dtype) and
``mu`` on floats; capturable evaluates both on the step tensors.

Every backend updates ``p`` and ``ax`` as the for-loop does, also the foreach
backend (torch's foreach computes ``p - eta * (g + lambd * p)`` and always
``ax + mu * (p - ax)``: the same numbers up to rounding, but NaN where the
for-loop keeps an infinite param or average).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import by_device_and_dtype, foreach_increment
from ._dispatch import register
from ._docs import document
from .low_precision import LowPrecisionMixin, options as low_precision_options
from ._common import signed_decayed_grads
from .optimizer import Optimizer, _any_dtensor, _get_scalar_dtype, _get_value, _to_scalar, zeros_like
from ._validation import check_lr, check_nonneg

__all__ = ["ASGD", "asgd_decay", "asgd_eta", "asgd_group_scalars", "asgd_mu", "asgd_next"]


def asgd_group_scalars(weight_decay):
    """The fused kernels' group constants, in the cpp kernel's argument order and the Triton
    table's: ``(weight_decay,)``, as the group holds it. Their per-tensor scalars, in this
    order: ``eta``, ``mu`` (the state's; the next ones are :func:`asgd_next`'s) and the
    param's decay :func:`asgd_decay` of that ``eta``."""
    return (weight_decay,)


def asgd_decay(lambd, eta):
    """The param's decay factor ``1 - lambd * eta`` (float, or tensor for a Tensor ``eta``:
    every backend evaluates it here, in the type it passes)."""
    return 1 - lambd * eta


def asgd_eta(lr, lambd, alpha, step):
    """The step size after ``step`` steps (float, or tensor for a Tensor ``lr``/``step``)."""
    return lr / ((1 + lambd * lr * step) ** alpha)


def asgd_mu(t0, step):
    """The averaging weight after ``step`` steps (float, or tensor for a Tensor ``step``)."""
    if isinstance(step, Tensor):
        return 1 / torch.maximum(step - t0, torch.ones_like(step))
    return 1 / max(1, step - t0)


def asgd_next(lr, lambd, alpha, t0, step: float) -> tuple[Tensor, Tensor]:
    """``(eta, mu)`` after ``step`` steps as the (non-capturable) for-loop stores them:
    :func:`asgd_eta` and :func:`asgd_mu` on Python floats, made tensors by
    ``torch.as_tensor`` as torch does, so rounded to the default dtype (or kept in a Tensor
    ``lr``'s dtype) whatever the dtype of the state they are then copied into."""
    return torch.as_tensor(asgd_eta(lr, lambd, alpha, step)), torch.as_tensor(asgd_mu(t0, step))


def _hparams(group):
    return _to_scalar(group["lr"]), group["lambd"], group["alpha"], group["t0"]


@register("asgd", "forloop")
def _asgd_forloop(group, params, grads, state):
    lr, lambd, alpha, t0 = _hparams(group)
    wd, capturable = group["weight_decay"], group["capturable"]
    lists = (params, grads, state["ax"], state["mu"], state["eta"], state["step"])
    for param, grad, ax, mu, eta, step_t in zip(*lists):
        grad = -grad if group["maximize"] else grad
        step_t += 1
        if wd != 0:
            grad = grad.add(param, alpha=wd)
        if capturable:
            param.mul_(asgd_decay(lambd, eta))
            param.addcmul_(grad, eta, value=-1)
        else:
            eta_value = _get_value(eta)
            param.mul_(asgd_decay(lambd, eta_value))
            param.add_(grad, alpha=-eta_value)
        if capturable or mu.item() != 1:
            ax.add_(param.sub(ax).mul_(mu))
        else:
            ax.copy_(param)
        if capturable:
            eta.copy_(asgd_eta(lr, lambd, alpha, step_t))
            mu.copy_(asgd_mu(t0, step_t))
        else:
            new_eta, new_mu = asgd_next(lr, lambd, alpha, t0, _get_value(step_t))
            eta.copy_(new_eta)
            mu.copy_(new_mu)


@register("asgd", "foreach")
def _asgd_foreach(group, params, grads, state):
    lr, lambd, alpha, t0 = _hparams(group)
    capturable = group["capturable"]
    lists = [params, grads, state["ax"], state["mu"], state["eta"], state["step"]]
    for p, g, ax, mu, eta, steps in by_device_and_dtype(lists):
        device = p[0].device
        foreach_increment(steps)
        # torch's foreach reads every step counter (for mu); no other value is read back, so
        # a step on a GPU syncs no more often than torch's
        step_values = None if capturable else [_get_value(s) for s in steps]
        g, _ = signed_decayed_grads(g, p, group["maximize"], group["weight_decay"])
        # p = p * (1 - lambd * eta) - eta * g, as the for-loop (an infinite p stays infinite;
        # torch's foreach p - eta * (g + lambd * p) makes it NaN). lambd == 0: p * 1 is p.
        if lambd != 0:
            if capturable:  # as the capturable for-loop: on the device, in eta's dtype
                decay = torch._foreach_mul(eta, -lambd)
                torch._foreach_add_(decay, 1)
            elif not eta[0].is_cpu:  # the for-loop's 1 - lambd * eta.item() in double, on
                # the device: no host sync (in eta's dtype, float64 params differed by 4e-8)
                decay = list(asgd_decay(lambd, torch.stack(eta).to(torch.float64)).to(p[0].dtype).unbind())
            else:  # the for-loop's host arithmetic (in double), free on the CPU
                decay = [asgd_decay(lambd, _get_value(e)) for e in eta]
            torch._foreach_mul_(p, decay)
            del decay
        torch._foreach_addcmul_(p, g, eta, value=-1)
        del g
        # ax = ax + mu * (p - ax); ax = p while mu == 1, as the for-loop (not inf - inf). The mu
        # of this step is the one the last step stored, asgd_mu(t0, t - 1): known on the host.
        averaged = ([True] * len(p) if capturable
                    else [asgd_mu(t0, v - 1) != 1 for v in step_values])
        for avg in set(averaged):
            a, q, m = ([t[i] for i, x in enumerate(averaged) if x == avg] for t in (ax, p, mu))
            if avg:
                torch._foreach_addcmul_(a, torch._foreach_sub(q, a), m)
            elif _any_dtensor(a):  # DTensor has no sharding rule for _foreach_copy_
                for x, y in zip(a, q):
                    x.copy_(y)
            else:
                torch._foreach_copy_(a, q)
        if capturable:
            torch._foreach_copy_(mu, [asgd_mu(t0, s) for s in steps])
            torch._foreach_copy_(eta, [asgd_eta(lr, lambd, alpha, s) for s in steps])
        else:
            etas = [torch.as_tensor(asgd_eta(lr, lambd, alpha, s), device=device) for s in steps]
            mus = [torch.as_tensor(asgd_mu(t0, v), device=device) for v in step_values]
            torch._foreach_copy_(eta, etas)
            torch._foreach_copy_(mu, mus)


@document(backends=("forloop", "foreach", "cpp", "triton"))
class ASGD(LowPrecisionMixin, Optimizer, torch.optim.ASGD):
    """Averaged Stochastic Gradient Descent (Polyak & Juditsky, 1992).

    A drop-in for ``torch.optim.ASGD`` (and a subclass of it): same signature,
    defaults, errors and ``state_dict()`` layout, so checkpoints load both ways.

    Update rule, per element, at step t (g = -grad if maximize):

        g   = g + wd * p
        p   = p * (1 - lambd * eta) - eta * g
        ax  = ax + mu * (p - ax)                  (ax = p while mu == 1)
        eta = lr / (1 + lambd * lr * t)^alpha
        mu  = 1 / max(1, t - t0)

    ``ax`` is the running average of the params (the averaged iterate); the
    ``eta`` and ``mu`` computed at step t are used by step t + 1.

    Args:
        {params}
        lr (float, Tensor, optional): learning rate (default: 1e-2)
        lambd (float, optional): decay term (default: 1e-4)
        alpha (float, optional): power for the ``eta`` update (default: 0.75)
        t0 (float, optional): step at which averaging starts (default: 1e6)
        weight_decay (float, optional): weight decay (L2 penalty) coefficient
            ``wd`` (default: 0)
        {foreach}
        {maximize}
        {differentiable}
        {capturable}
        {low_precision}

    {backends}

    State:
        ``state[p]`` for each param ``p``, as ``torch.optim.ASGD`` keeps it,
        created at its first step: ``step``, ``eta`` and ``mu`` (0-dim tensors on
        the param's device) and ``ax`` (shaped like ``p``).
    """

    algorithm = "asgd"
    sparse_grad_error = "ASGD does not support sparse gradients"
    capturable_tensors = "params, mus, etas, and state_steps"
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
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        kahan_sum: bool = False,
        stochastic_rounding: bool = False,
        state_dtype: torch.dtype | None = None,
        rounding_seed: int | None = None,
    ) -> None:
        check_lr(lr)
        check_nonneg(weight_decay=weight_decay)
        defaults = dict(
            lr=lr,
            lambd=lambd,
            alpha=alpha,
            t0=t0,
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
        scalar = dict(device=p.device, dtype=_get_scalar_dtype())
        return {
            "step": torch.zeros((), **scalar),
            "eta": torch.as_tensor(_to_scalar(group["lr"]), **scalar).clone().detach(),
            "mu": torch.ones((), **scalar),
            "ax": zeros_like(p),
        }

    def _state_keys(self, group):
        return ("step", "eta", "mu", "ax")

    def __setstate__(self, state):
        # Unlike the other optimizers, torch keeps ASGD's scalars on the param's
        # device even when not capturable; old checkpoints hold Python numbers.
        for group in state.get("param_groups", ()):
            for p in group["params"]:
                p_state = state.get("state", {}).get(p, {})
                for key in ("step", "eta", "mu") if len(p_state) else ():
                    if key in p_state and not torch.is_tensor(p_state[key]):
                        p_state[key] = torch.tensor(
                            float(p_state[key]) if key == "step" else p_state[key],
                            dtype=_get_scalar_dtype(),
                            device=p.device,
                        )
        super().__setstate__(state)
