"""Adam / AdamW (+ amsgrad), Adamax, NAdam, RAdam and SparseAdam as fused multi-tensor kernels.

Host scalars come from each algorithm's own scalar functions (``adam_scalars`` and
``adam_group_scalars``, ``adamax_*``, ``nadam_*``, ``radam_*``: the one place bias
corrections, ``1 - beta1``, ... are computed); the hosts here pass them on and the kernels
only apply them. Each table holds its group scalars in the order the cpp kernel takes them.
"""

from __future__ import annotations

import math
import operator
from itertools import repeat

import torch
import triton
import triton.language as tl

from ...adam import adam_group_scalars, adam_scalars
from ...adamax import adamax_group_scalars, adamax_scalars
from ...nadam import nadam_group_scalars, nadam_scalars
from ...optimizer import _to_scalar
from ...radam import radam_group_scalars, radam_scalars
from . import _helpers as h
from ._elementwise import Kernel
from ._host import Same, commit_steps, common, next_steps, per_device, per_tensor, read, stack_scalars, value
from ._launcher import launch

_DTYPE = operator.attrgetter("dtype")


@triton.jit
def _adam_scalars_in(stab, k0, ACC64: tl.constexpr):
    """The six group scalars every Adam-family launch passes (Adam, NAdam: first, k0 = 0;
    RAdam: after lr, k0 = 1), in this order."""
    w1 = h.scalar(stab, k0 + 0, ACC64)  # 1 - beta1
    beta2 = h.scalar(stab, k0 + 1, ACC64)
    omb2 = h.scalar(stab, k0 + 2, ACC64)  # 1 - beta2
    eps = h.scalar(stab, k0 + 3, ACC64)
    wd = h.scalar(stab, k0 + 4, ACC64)
    decay = h.scalar(stab, k0 + 5, ACC64)  # 1 - lr * wd (decoupled)
    return w1, beta2, omb2, eps, wd, decay


@triton.jit
def _moments(pp, mp, vp, offs, mask, g, w1, beta2, omb2, wd, decay,
             WD_MODE: tl.constexpr, ACC64: tl.constexpr):
    """The Adam-family prologue: p, weight decay, then m = lerp(m, g, 1 - beta1) and
    v = beta2 * v + (1 - beta2) * g^2, stored."""
    p = h.load(pp, offs, mask, ACC64)
    p, g = h.weight_decay(p, g, wd, decay, WD_MODE)
    m = h.lerp(h.load(mp, offs, mask, ACC64), g, w1)
    v = h.ema_sq(h.load(vp, offs, mask, ACC64), g, beta2, omb2)
    h.store(mp, offs, m, mask)
    h.store(vp, offs, v, mask)
    return p, g, m, v


@triton.jit
def _adam_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    w1, beta2, omb2, eps, wd, decay = _adam_scalars_in(stab, 0, ACC64)
    step_size = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    bc2_sqrt = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 1, ACC64)
    return w1, beta2, omb2, eps, wd, decay, step_size, bc2_sqrt


@triton.jit
def _adam(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
          WD_MODE: tl.constexpr, AMSGRAD: tl.constexpr, _F2: tl.constexpr):
    """m, v as :func:`_moments`; amsgrad: v = max(v_max, v) (stored);
    p -= step_size * m / (sqrt(v) / sqrt(bias_correction2) + eps)."""
    pp, _, mp, vp, vmaxp = ptrs
    w1, beta2, omb2, eps, wd, decay, step_size, bc2_sqrt = sc
    p, g, m, v = _moments(pp, mp, vp, offs, mask, g, w1, beta2, omb2, wd, decay, WD_MODE, ACC64)
    if AMSGRAD:
        v = tl.maximum(h.load(vmaxp, offs, mask, ACC64), v)
        h.store(vmaxp, offs, v, mask)
    denom = h.div(h.sqrt(v, ACC64), bc2_sqrt, ACC64) + eps
    p = p - step_size * h.div(m, denom, ACC64)
    h.store(pp, offs, p, mask)


_adam_kernel = Kernel("adam", _adam, _adam_scalars)


def _wd_mode(group) -> int:
    if group["weight_decay"] == 0:
        return 0
    return 2 if group.get("decoupled_weight_decay") else 1


def adam(group, params, grads, state, grad_scale=None, found_inf=None):
    lr = _to_scalar(group["lr"])
    beta1, beta2 = (_to_scalar(b) for b in group["betas"])
    amsgrad, steps = group["amsgrad"], state["step"]
    nxt = next_steps(steps, group["capturable"])
    roles = [params, grads, state["exp_avg"], state["exp_avg_sq"],
             state["max_exp_avg_sq"] if amsgrad else None]
    launch(
        _adam_kernel, roles, columns=per_tensor(adam_scalars, nxt, lr, beta1, beta2),
        group_scalars=list(adam_group_scalars(lr, beta1, beta2, group["eps"], group["weight_decay"],
                                              group.get("decoupled_weight_decay"), params[0])),
        grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), WD_MODE=_wd_mode(group), AMSGRAD=bool(amsgrad),
    )
    commit_steps(steps, found_inf, nxt)


# ---- Adamax ------------------------------------------------------------------------------
@triton.jit
def _adamax_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    w1 = h.scalar(stab, 0, ACC64)
    beta2 = h.scalar(stab, 1, ACC64)
    eps = h.scalar(stab, 2, ACC64)
    wd = h.scalar(stab, 3, ACC64)
    step_size = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    return w1, beta2, eps, wd, step_size


@triton.jit
def _adamax(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
            HAS_WD: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """g += wd * p; m = lerp(m, g, 1 - beta1); u = max(u * beta2, |g| + eps);
    p -= step_size * m / u."""
    pp, _, mp, up, _ = ptrs
    w1, beta2, eps, wd, step_size = sc
    p = h.load(pp, offs, mask, ACC64)
    if HAS_WD:
        g = h.add_decay(g, p, wd)
    m = h.lerp(h.load(mp, offs, mask, ACC64), g, w1)
    u = tl.maximum(h.load(up, offs, mask, ACC64) * beta2, tl.abs(g) + eps,
                   propagate_nan=tl.PropagateNan.ALL)  # torch.maximum keeps NaN
    h.store(mp, offs, m, mask)
    h.store(up, offs, u, mask)
    h.store(pp, offs, p - step_size * h.div(m, u, ACC64), mask)


_adamax_kernel = Kernel("adamax", _adamax, _adamax_scalars)


def adamax(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    steps = state["step"]
    nxt = next_steps(steps, group["capturable"])
    launch(
        _adamax_kernel, [params, grads, state["exp_avg"], state["exp_inf"]],
        group_scalars=list(adamax_group_scalars(beta1, beta2, group["eps"], group["weight_decay"], params[0])),
        columns=per_tensor(adamax_scalars, nxt, lr, beta1), grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), HAS_WD=group["weight_decay"] != 0,
    )
    commit_steps(steps, found_inf, nxt)


# ---- NAdam -------------------------------------------------------------------------------
@triton.jit
def _nadam_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    w1, beta2, omb2, eps, wd, decay = _adam_scalars_in(stab, 0, ACC64)
    bc2 = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    grad_step = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 1, ACC64)
    exp_avg_step = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 2, ACC64)
    return w1, beta2, omb2, eps, wd, decay, bc2, grad_step, exp_avg_step


@triton.jit
def _nadam(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
           WD_MODE: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """m, v as :func:`_moments`; denom = sqrt(v / bias_correction2) + eps;
    p += grad_step * g / denom + exp_avg_step * m / denom (steps from ``nadam_scalars``)."""
    pp, _, mp, vp, _ = ptrs
    w1, beta2, omb2, eps, wd, decay, bc2, grad_step, exp_avg_step = sc
    p, g, m, v = _moments(pp, mp, vp, offs, mask, g, w1, beta2, omb2, wd, decay, WD_MODE, ACC64)
    denom = h.sqrt(h.div(v, bc2, ACC64), ACC64) + eps
    p = p + grad_step * h.div(g, denom, ACC64)
    p = p + exp_avg_step * h.div(m, denom, ACC64)
    h.store(pp, offs, p, mask)


_nadam_kernel = Kernel("nadam", _nadam, _nadam_scalars)


def nadam(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    md, capturable = group["momentum_decay"], group["capturable"]
    steps, mus = state["step"], state["mu_product"]
    nxt = next_steps(steps, capturable)
    # nadam_scalars returns the advanced mu_product (one per distinct value), committed after the launch
    if isinstance(nxt, torch.Tensor):
        mu_vec = stack_scalars(mus)
        *columns, new_vec = nadam_scalars(lr, beta1, beta2, md, nxt.to(mu_vec.dtype) if capturable else nxt,
                                          mu_vec, True)
        new_mus = list(new_vec.unbind())
    elif capturable:  # (CPU counters) tensor math on each param's own mu_product
        each = nxt if isinstance(nxt, list) else repeat(nxt)
        rows = [nadam_scalars(lr, beta1, beta2, md, s, mu, True) for s, mu in zip(each, mus)]
        columns, new_mus = [[row[k] for row in rows] for k in range(3)], [row[3] for row in rows]
    else:
        columns, new_mus = _nadam_host(lr, beta1, beta2, md, nxt, mus)
    launch(
        _nadam_kernel, [params, grads, state["exp_avg"], state["exp_avg_sq"]],
        group_scalars=list(nadam_group_scalars(lr, beta1, beta2, group["eps"], group["weight_decay"],
                                               group["decoupled_weight_decay"])),
        columns=columns, grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), WD_MODE=_wd_mode(group),
    )
    if found_inf is not None:
        keeps = per_device(found_inf != 0, mus)
        new_mus = [torch.where(keep, old, new.to(device=old.device, dtype=old.dtype))
                   for keep, old, new in zip(keeps, mus, new_mus)]
    # (copy_ rounds to each mu_product's dtype, and broadcasts a 0-dim value to its shape)
    torch._foreach_copy_(mus, new_mus)
    commit_steps(steps, found_inf, nxt)


def _nadam_host(lr, beta1, beta2, md, nxt, mus):
    """NAdam's columns and advanced ``mu_product`` values for CPU state, from the values as
    the for-loop reads them: :func:`nadam_scalars` once per distinct (step, mu_product
    value, dtype), with that mu_product as a 0-dim tensor, so every value is the for-loop's.
    Usually one: every column is then :class:`~._host.Same`."""
    values = read(mus)
    m = common(values, signed_zero=True)
    if isinstance(nxt, float) and m is not None and len(set(map(_DTYPE, mus))) == 1:
        *columns, new = nadam_scalars(lr, beta1, beta2, md, nxt, mus[0].reshape(()), False)
        return [Same(c) for c in columns], [new] * len(mus)
    memo: dict = {}
    rows = []
    steps = nxt if isinstance(nxt, list) else repeat(nxt)
    for s, v, mu in zip(steps, values, mus):
        key = (s, v, math.copysign(1.0, v), mu.dtype)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = nadam_scalars(lr, beta1, beta2, md, s, mu.reshape(()), False)
        rows.append(hit)
    return [[row[k] for row in rows] for k in range(3)], [row[3] for row in rows]


# ---- RAdam -------------------------------------------------------------------------------
@triton.jit
def _radam_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    lr = h.scalar(stab, 0, ACC64)
    w1, beta2, omb2, eps, wd, decay = _adam_scalars_in(stab, 1, ACC64)
    bc1 = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    bc2_sqrt = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 1, ACC64)
    rect = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 2, ACC64)
    return lr, w1, beta2, omb2, eps, wd, decay, bc1, bc2_sqrt, rect


@triton.jit
def _radam(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
           WD_MODE: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """m, v as :func:`_moments`; upd = m / bias_correction1 * lr, times
    rect * sqrt(bias_correction2) / (sqrt(v) + eps) once rectified (rect > 0); p -= upd."""
    pp, _, mp, vp, _ = ptrs
    lr, w1, beta2, omb2, eps, wd, decay, bc1, bc2_sqrt, rect = sc
    p, g, m, v = _moments(pp, mp, vp, offs, mask, g, w1, beta2, omb2, wd, decay, WD_MODE, ACC64)
    upd = h.div(m, bc1, ACC64) * lr
    adaptive = h.div(bc2_sqrt + 0 * v, h.sqrt(v, ACC64) + eps, ACC64)
    upd = tl.where(rect > 0, upd * adaptive * rect, upd)
    h.store(pp, offs, p - upd, mask)


_radam_kernel = Kernel("radam", _radam, _radam_scalars)


def radam(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    steps = state["step"]
    nxt = next_steps(steps, group["capturable"])
    launch(
        _radam_kernel, [params, grads, state["exp_avg"], state["exp_avg_sq"]],
        group_scalars=list(radam_group_scalars(lr, beta1, beta2, group["eps"], group["weight_decay"],
                                               group["decoupled_weight_decay"])),
        columns=per_tensor(radam_scalars, nxt, beta1, beta2), grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), WD_MODE=_wd_mode(group),
    )
    commit_steps(steps, found_inf, nxt)


# ---- SparseAdam ----------------------------------------------------------------------------
@triton.jit
def _sparse_adam_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    val_ref, row_ref, p_ref, m_ref, v_ref,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    MAXIMIZE: tl.constexpr,
):
    """One program per chunk of a coalesced sparse grad's values ``(nnz, row_len)``: each
    value updates element ``row * row_len + col`` of the (contiguous) param and moments.
    Coalesced rows are distinct, so no two programs write one element."""
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, False)
    valp = h.tensor_ptr(itab, 0, n_tensors, ti, val_ref, False)
    rowp = h.tensor_ptr(itab, 1, n_tensors, ti, row_ref, False)
    pp = h.tensor_ptr(itab, 2, n_tensors, ti, p_ref, False)
    mp = h.tensor_ptr(itab, 3, n_tensors, ti, m_ref, False)
    vp = h.tensor_ptr(itab, 4, n_tensors, ti, v_ref, False)
    omb1 = h.scalar(stab, 0, ACC64)  # 1 - beta1
    omb2 = h.scalar(stab, 1, ACC64)  # 1 - beta2
    eps = h.scalar(stab, 2, ACC64)
    row_len = tl.load(stab + N_GROUP + ti * N_PER).to(tl.int64)  # exact in fp64
    neg_step_size = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 1, ACC64)
    for it in range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        g = h.load(valp, offs, mask, ACC64)
        if MAXIMIZE:
            g = -g
        dst = tl.load(rowp + offs // row_len, mask=mask, other=0) * row_len + offs % row_len
        m_old = h.load(mp, dst, mask, ACC64)
        v_old = h.load(vp, dst, mask, ACC64)
        # torch's op order: (g - m) * (1 - beta1), then m + that; (g^2 - v) * (1 - beta2)
        m = m_old + (g - m_old) * omb1
        v = v_old + (g * g - v_old) * omb2
        h.store(mp, dst, m, mask)
        h.store(vp, dst, v, mask)
        upd = neg_step_size * h.div(m, h.sqrt(v, ACC64) + eps, ACC64)
        h.store(pp, dst, h.load(pp, dst, mask, ACC64) + upd, mask)


def _flat_rows(grad: torch.Tensor) -> torch.Tensor:
    """The coalesced grad's row numbers in the param viewed as ``(prod(sparse dims), -1)``."""
    idx = grad._indices()
    sd = grad.sparse_dim()
    if sd == 1:
        return idx[0].contiguous()
    if sd == 0:
        return torch.zeros(idx.shape[1], dtype=torch.int64, device=idx.device)
    sizes = list(grad.shape[:sd])
    mult = [1] * sd
    for d in range(sd - 2, -1, -1):
        mult[d] = mult[d + 1] * sizes[d + 1]
    return (idx * torch.tensor(mult, dtype=idx.dtype, device=idx.device)[:, None]).sum(0)


def sparse_adam(group, params, grads, state, grad_scale=None, found_inf=None):
    from ...sparse_adam import sparse_adam_step_size
    from ._host import amp_on_host, contiguous_stage, write_back
    from ._launcher import chunk_config, launch_raw

    if amp_on_host(grads, grad_scale, found_inf):
        return
    lr, (beta1, beta2), eps = _to_scalar(group["lr"]), group["betas"], group["eps"]
    steps = state["step"]
    vals, rows, row_lens, neg_ss = [], [], [], []
    for i, g in enumerate(grads):
        steps[i] += 1  # counted even when the grad has no entries, as torch does
        g = g.coalesce()
        v = g._values()
        vals.append(v.contiguous().reshape(-1))
        rows.append(_flat_rows(g))
        row_lens.append(float(v[0].numel()) if v.shape[0] else 1.0)
        ss = sparse_adam_step_size(lr, beta1, beta2, steps[i])
        neg_ss.append(value(-ss))
    ps, staged = contiguous_stage(list(params))
    ms, staged_m = contiguous_stage(list(state["exp_avg"]))
    vs, staged_v = contiguous_stage(list(state["exp_avg_sq"]))
    block, iters = chunk_config()
    launch_raw(
        _sparse_adam_kernel, [vals, rows, ps, ms, vs], block * iters,
        group_scalars=[1 - beta1, 1 - beta2, eps], columns=[row_lens, neg_ss],
        BLOCK=block, ITERS=iters, MAXIMIZE=bool(group.get("maximize", False)),
    )
    write_back(staged + staged_m + staged_v)
