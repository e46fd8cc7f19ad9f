"""Adafactor on the cpp backend: its update and ``optimlab::adafactor_``'s CPU implementation.

The kernel (``csrc/adafactor.cpp``) runs a group's step in four passes over memory; between
its statistics and its update it calls back here for each param's coefficient of ``U``,
``-alpha / max(1, RMS(U) / d)``, from the norms it computed, with the scalar functions of
:mod:`optimlab.adafactor` the other backends use (as ``p.norm(2).item()`` rounds them).
See ``cpu.py`` for how an update and an operator implementation split the work.
"""

from __future__ import annotations

from torch import Tensor

from ..adafactor import _eps1, beta2_weight, clip_from_norm, step_size
from ..optimizer import _to_scalar
from . import ops
from .cpu import _cpp_update, _per_step, _skipped, _value, load

__all__: list[str] = []


@_cpp_update("adafactor")
def _adafactor_cpp(group, params, grads, state):
    # (a param has row_var and col_var, 2+ dims, or variance: the lists hold None elsewhere)
    return (params, grads, [v for v in state["row_var"] if v is not None],
            [v for v in state["col_var"] if v is not None],
            [v for v in state["variance"] if v is not None], state["step"], group["lr"],
            group["beta2_decay"], _eps1(group, params[0]), group["eps"][1], group["d"],
            group["weight_decay"], bool(group["maximize"]))


@ops.cpu_impl("adafactor")
def _adafactor_impl(params, grads, row_vars, col_vars, variances, state_steps, lr, beta2_decay, eps1, eps2,
                    d, weight_decay, maximize, grad_scale=None, found_inf=None):
    ext = load()
    if _skipped(found_inf):
        return  # nothing changes, not even a step counter
    lr = _to_scalar(lr)
    numels = [p.numel() for p in params]
    steps: list[float] = []  # each param's next step value (the kernel's step protocol, cpu.py)

    def beta2_weights(next_steps):
        steps.extend(next_steps * len(params) if len(next_steps) == 1 else next_steps)
        for s, n in zip(steps, numels):
            if n == 0:  # torch's for-loop divides by zero: refuse before anything changes
                step_size(lr, eps2, s, 0.0, n)
        return [_per_step(lambda s: _value(beta2_weight(beta2_decay, s)), next_steps)]

    def coefficients(first, param_norms, update_norms):  # params first, first + 1, ...
        out = [-step_size(lr, eps2, s, pn, n) / clip_from_norm(un, n, d)
               for s, pn, un, n in zip(steps[first:], param_norms, update_norms, numels[first:])]
        return list(map(_value, out)) if isinstance(lr, Tensor) else out  # (a Tensor lr: Tensors)

    ext.adafactor(
        params, grads, row_vars, col_vars, variances, state_steps, beta2_weights, float(eps1),
        _value(weight_decay), _value(1 - lr * weight_decay), bool(maximize), coefficients,
        grad_scale, found_inf,
    )
