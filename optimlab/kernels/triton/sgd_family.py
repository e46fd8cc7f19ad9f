"""SGD (momentum, dampening, Nesterov), ASGD and Rprop as fused multi-tensor kernels."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...asgd import asgd_decay, asgd_eta, asgd_group_scalars, asgd_mu, asgd_next
from ...optimizer import _to_scalar
from ...rprop import rprop_group_scalars
from ...sgd import sgd_group_scalars
from . import _helpers as h
from . import _host
from ._elementwise import Kernel
from ._host import Same, commit_steps, common, each, per_tensor, read, stack_scalars
from ._launcher import launch


@triton.jit
def _sgd_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    # sgd_group_scalars
    lr = h.scalar(stab, 0, ACC64)
    wd = h.scalar(stab, 1, ACC64)
    momentum = h.scalar(stab, 2, ACC64)
    one_minus_dampening = h.scalar(stab, 3, ACC64)
    first = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)  # 1: the buffer is new
    return lr, wd, momentum, one_minus_dampening, first


@triton.jit
def _sgd(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
         HAS_WD: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr):
    """g += wd * p; b = g on the buffer's first step, else momentum * b + (1 - dampening) * g;
    g = g + momentum * b (Nesterov) or b; p -= lr * g."""
    pp, _, bp, _, _ = ptrs
    lr, wd, momentum, one_minus_dampening, first = sc
    p = h.load(pp, offs, mask, ACC64)
    if HAS_WD:
        g = h.add_decay(g, p, wd)
    if MOMENTUM:
        b = h.load(bp, offs, mask, ACC64)
        b = tl.where(first != 0, g, b * momentum + one_minus_dampening * g)
        h.store(bp, offs, b, mask)
        if NESTEROV:
            g = g + momentum * b
        else:
            g = b
    h.store(pp, offs, p - lr * g, mask)


_sgd_kernel = Kernel("sgd", _sgd, _sgd_scalars)


def sgd(group, params, grads, state, grad_scale=None, found_inf=None, fresh=()):
    """``fresh``: the momentum buffers made for this step (``_host.fresh_state``, uninitialised):
    the kernel starts them as the grad."""
    wd, momentum = group["weight_decay"], group["momentum"]
    bufs = state.get("momentum_buffer") if momentum != 0 else None
    first = Same(0.0)
    if fresh:
        first = [0.0] * len(params)
        for i in fresh:
            first[i] = 1.0
    try:
        launch(
            _sgd_kernel, [params, grads, bufs],
            group_scalars=list(sgd_group_scalars(_to_scalar(group["lr"]), wd, momentum, group["dampening"])),
            columns=[first], grad_scale=grad_scale, found_inf=found_inf,
            MAXIMIZE=bool(group["maximize"]), HAS_WD=bool(wd != 0), MOMENTUM=momentum != 0,
            NESTEROV=bool(group["nesterov"]),
        )
    except BaseException:
        for i in fresh:  # a step that raises (nothing was updated) leaves no new buffer behind
            bufs[i] = None
        raise


@triton.jit
def _asgd_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    wd = h.scalar(stab, 0, ACC64)  # asgd_group_scalars: (wd,)
    # per tensor: eta, mu (the state's, as the cpp kernel takes them), decay = asgd_decay(lambd, eta)
    eta = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    mu = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 1, ACC64)
    decay = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 2, ACC64)
    return wd, eta, mu, decay


@triton.jit
def _asgd(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
          HAS_WD: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """g += wd * p; p = p * decay - eta * g (decay = 1 - lambd * eta); ax += (p - ax) * mu (ax = p at
    mu 1)."""
    pp, _, axp, _, _ = ptrs
    wd, eta, mu, decay = sc
    p = h.load(pp, offs, mask, ACC64)
    # loaded before p is stored: the compiler cannot move a load past a store to
    # another pointer (they may alias), and the load would wait for memory again
    ax = h.load(axp, offs, mask, ACC64)
    if HAS_WD:
        g = h.add_decay(g, p, wd)
    p = p * decay
    p = p - eta * g
    h.store(pp, offs, p, mask)
    ax = tl.where(mu != 1, ax + (p - ax) * mu, p)
    h.store(axp, offs, ax, mask)


_asgd_kernel = Kernel("asgd", _asgd, _asgd_scalars)


def asgd(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, lambd, alpha, t0 = _to_scalar(group["lr"]), group["lambd"], group["alpha"], group["t0"]
    steps, etas, mus = state["step"], state["eta"], state["mu"]
    capturable = group["capturable"]
    # eta, mu and step live on the param's device (as torch keeps them): read them there,
    # without a host sync, unless they are on the CPU (interpreter)
    on_dev = capturable or _host.on_device(steps)
    if on_dev:
        eta = stack_scalars(etas)
        if not capturable:  # the for-loop's 1 - lambd * eta.item(), in double
            eta = eta.to(torch.float64)
        columns = [eta, stack_scalars(mus), asgd_decay(lambd, eta)]
    else:  # the values as the for-loop reads them (.item()); usually one for the group
        eta_vals, mu_vals = read(etas), read(mus)
        e, m = common(eta_vals, signed_zero=True), common(mu_vals, signed_zero=True)
        columns = [Same(e) if e is not None else eta_vals, Same(m) if m is not None else mu_vals,
                   Same(asgd_decay(lambd, e)) if e is not None else [asgd_decay(lambd, v) for v in eta_vals]]
    launch(
        _asgd_kernel, [params, grads, state["ax"]],
        group_scalars=list(asgd_group_scalars(group["weight_decay"])), columns=columns,
        grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), HAS_WD=group["weight_decay"] != 0,
    )
    if not on_dev:
        if found_inf is not None and float(found_inf) != 0:
            return
        s = commit_steps(steps, found_inf, held=True)
        # eta and mu after this step: asgd_next once per distinct step count (usually one),
        # the tensors it returns copied into every eta / mu at that count (one foreach copy)
        new_eta, new_mu = per_tensor(asgd_next, s if s is not None else list(map(float, read(steps))),
                                     lr, lambd, alpha, t0)
        torch._foreach_copy_(etas, each(new_eta, len(etas)))
        torch._foreach_copy_(mus, each(new_mu, len(mus)))
        return
    commit_steps(steps, found_inf)
    # eta and mu after this step, from the shared scalar functions, vectorised over the
    # step counters: in their dtype when capturable (as the capturable for-loop), else in
    # double (as the for-loop on Python floats)
    s = stack_scalars(steps)
    if not capturable:
        s = s.to(torch.float64)
    new_eta, new_mu = asgd_eta(lr, lambd, alpha, s), asgd_mu(t0, s)
    if not capturable:  # stored as asgd_next stores them: rounded as torch.as_tensor rounds
        new_eta = new_eta.to(lr.dtype if isinstance(lr, torch.Tensor) else torch.get_default_dtype())
        new_mu = new_mu.to(torch.get_default_dtype())
    if found_inf is not None:  # skipped step: keep the old values
        keep = found_inf.to(s.device) != 0
        new_eta = torch.where(keep, stack_scalars(etas), new_eta)
        new_mu = torch.where(keep, stack_scalars(mus), new_mu)
    torch._foreach_copy_(etas, list(new_eta.to(etas[0].dtype).unbind()))
    torch._foreach_copy_(mus, list(new_mu.to(mus[0].dtype).unbind()))


@triton.jit
def _rprop_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    # rprop_group_scalars
    etaminus = h.scalar(stab, 0, ACC64)
    etaplus = h.scalar(stab, 1, ACC64)
    size_min = h.scalar(stab, 2, ACC64)
    size_max = h.scalar(stab, 3, ACC64)
    return etaminus, etaplus, size_min, size_max


@triton.jit
def _rprop(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
           _F0: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """size *= etaplus / etaminus / 1 by the sign of g * prev, clamped; where it shrank g = 0;
    p -= sign(g) * size; prev = g."""
    pp, _, prevp, sp, _ = ptrs
    etaminus, etaplus, size_min, size_max = sc
    prod = g * h.load(prevp, offs, mask, ACC64)
    # torch: factor = etaplus / etaminus / 1 for sign +/-/0; torch.sign(NaN) is 0
    factor = tl.where(prod > 0, etaplus, tl.where(prod < 0, etaminus, 1.0))
    size = h.load(sp, offs, mask, ACC64) * factor
    # clamp_ as torch: NaN stays NaN
    size = tl.minimum(tl.maximum(size, size_min, propagate_nan=tl.PropagateNan.ALL), size_max,
                      propagate_nan=tl.PropagateNan.ALL)
    h.store(sp, offs, size, mask)
    g = tl.where(factor == etaminus, 0.0, g)
    sign = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))  # sign(NaN) = 0, as torch
    h.store(pp, offs, h.load(pp, offs, mask, ACC64) - sign * size, mask)
    h.store(prevp, offs, g, mask)


_rprop_kernel = Kernel("rprop", _rprop, _rprop_scalars)


def rprop(group, params, grads, state, grad_scale=None, found_inf=None):
    launch(
        _rprop_kernel, [params, grads, state["prev"], state["step_size"]],
        group_scalars=list(rprop_group_scalars(*group["etas"], *group["step_sizes"])),
        grad_scale=grad_scale, found_inf=found_inf, MAXIMIZE=bool(group["maximize"]),
    )
    commit_steps(state["step"], found_inf)
