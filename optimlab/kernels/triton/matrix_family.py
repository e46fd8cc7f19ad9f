"""Adafactor (factored second moment) and Muon (momentum + batched Newton–Schulz).

Adafactor, one step of a param group, in four launches whatever the number of params:

1. ``_adafactor_row_kernel`` (params of 2+ dims): one program per block of rows of the
   grads viewed as ``(k * R, C)``: ``row_var = lerp(row_var, mean(g^2, -1), 1 - beta2_t)``;
2. ``_adafactor_col_kernel`` (params of 2+ dims): one program per block of columns of
   ``(k, R, C)``: ``col_var = lerp(col_var, mean(g^2, -2), 1 - beta2_t)``, then, for its
   columns, the factored estimate ``V = row_var col_var / max(mean(row_var), eps1)`` and
   the update ``U = g / sqrt(max(V, eps1^2))`` (written to a scratch tensor);
3. ``_adafactor_vec_kernel`` (params of 0 or 1 dim): ``variance = lerp(variance, g^2, ..)``
   and ``U`` likewise;
4. the host takes ``alpha`` and the clipping denominator from the shared functions
   (:func:`optimlab.adafactor.adafactor_scalars`, :func:`~optimlab.adafactor.clip_denominator`,
   each one ``.item()`` per param, as torch's for-loop), then ``_adafactor_apply_kernel``
   updates every param: ``p = p * (1 - lr * wd) - alpha / clip * U``.

Muon, one step: ``_muon_momentum_kernel`` updates every momentum buffer (and the Nesterov
look-ahead) and writes the update in bfloat16 straight into a ``(k, m, n)`` batch per
param shape; :func:`optimlab.muon.zeropower_via_newtonschulz` orthogonalizes each batch
(``baddbmm``; a single matrix takes the 2-D path, as the for-loop); ``_muon_apply_kernel``
applies weight decay and ``-adjust_lr(lr, ...) * O`` to every param.

AMP (grad_scale / found_inf): Adafactor handles it on the host (``_host.amp_on_host``: one
host sync, among the ``.item()`` calls it makes anyway); Muon in its kernels (no host sync).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._common import foreach_increment
from ...optimizer import _to_scalar
from . import _helpers as h
from ._elementwise import Kernel
from ._host import amp_on_host, contiguous_stage, value, write_back
from ._launcher import launch, launch_raw

#: rows (columns) per program of the reduction kernels, and the tile of the other dim
RED_BLOCK = 32
RED_TILE = 64
INTERPRET_RED_BLOCK = 8
INTERPRET_RED_TILE = 8


def _red_config() -> tuple[int, int]:
    from . import interpreting

    return (INTERPRET_RED_BLOCK, INTERPRET_RED_TILE) if interpreting() else (RED_BLOCK, RED_TILE)


@triton.jit
def _int_scalar(stab, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ti, k):
    """Per-tensor integer ``k`` (a dimension size, exact in the fp64 table)."""
    return tl.load(stab + N_GROUP + ti * N_PER + k).to(tl.int64)


@triton.jit
def _mean_sq(sum_sq, n, ACC64: tl.constexpr):
    """``torch.norm(g, dim).square_().div_(n)`` from the sum of squares (norm, then square)."""
    norm = h.sqrt(sum_sq, ACC64)
    return h.div(norm * norm, h.acc(n, ACC64), ACC64)


@triton.jit
def _clamp_min(x, lo):
    """``x.clamp_(min=lo)``: NaN stays NaN."""
    return tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _adafactor_row_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    rv_ref, g_ref,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr,
):
    """Rows ``start .. start + BLOCK`` of ``(k * R, C)``: ``row_var`` of each."""
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, False)
    rvp = h.tensor_ptr(itab, 0, n_tensors, ti, rv_ref, False)
    gp = h.tensor_ptr(itab, 1, n_tensors, ti, g_ref, False)
    C = _int_scalar(stab, N_GROUP, N_PER, ti, 0)
    w = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 1, ACC64)  # 1 - beta2_t
    rows = start + tl.arange(0, BLOCK)
    rmask = rows < numel
    if ACC64:
        acc = tl.zeros([BLOCK], tl.float64)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, C, TILE):
        cols = c0 + tl.arange(0, TILE)
        m2 = rmask[:, None] & (cols < C)[None, :]
        g = h.load(gp, rows[:, None] * C + cols[None, :], m2, ACC64)
        acc += tl.sum(g * g, axis=1)
    rv = h.lerp(h.load(rvp, rows, rmask, ACC64), _mean_sq(acc, C, ACC64), w)
    h.store(rvp, rows, rv, rmask)


@triton.jit
def _adafactor_col_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    cv_ref, g_ref, rv_ref, u_ref,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr,
    MAXIMIZE: tl.constexpr,
):
    """Columns ``start .. start + BLOCK`` of ``(k, R, C)`` (a block may span matrices):
    ``col_var``, then ``U`` on those columns (``row_var`` is final: the row kernel ran)."""
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, False)
    cvp = h.tensor_ptr(itab, 0, n_tensors, ti, cv_ref, False)
    gp = h.tensor_ptr(itab, 1, n_tensors, ti, g_ref, False)
    rvp = h.tensor_ptr(itab, 2, n_tensors, ti, rv_ref, False)
    up = h.tensor_ptr(itab, 3, n_tensors, ti, u_ref, False)
    eps1 = h.scalar(stab, 0, ACC64)
    eps1_sq = h.scalar(stab, 1, ACC64)
    R = _int_scalar(stab, N_GROUP, N_PER, ti, 0)
    C = _int_scalar(stab, N_GROUP, N_PER, ti, 1)
    w = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 2, ACC64)
    cols = start + tl.arange(0, BLOCK)
    cmask = cols < numel
    mat = cols // C
    base = mat * R * C + cols % C  # element (mat, 0, col)
    rbase = mat * R  # row_var (mat, 0)
    if ACC64:
        acc = tl.zeros([BLOCK], tl.float64)
        rsum = tl.zeros([BLOCK], tl.float64)
    else:
        acc = tl.zeros([BLOCK], tl.float32)
        rsum = tl.zeros([BLOCK], tl.float32)
    for r0 in range(0, R, TILE):
        rr = r0 + tl.arange(0, TILE)
        m2 = (rr < R)[:, None] & cmask[None, :]
        g = h.load(gp, base[None, :] + rr[:, None] * C, m2, ACC64)
        acc += tl.sum(g * g, axis=0)
        rsum += tl.sum(h.load(rvp, rbase[None, :] + rr[:, None], m2, ACC64), axis=0)
    cv = h.lerp(h.load(cvp, cols, cmask, ACC64), _mean_sq(acc, R, ACC64), w)
    h.store(cvp, cols, cv, cmask)
    row_mean = _clamp_min(h.div(rsum, h.acc(R, ACC64), ACC64), eps1)
    for r0 in range(0, R, TILE):
        rr = r0 + tl.arange(0, TILE)
        m2 = (rr < R)[:, None] & cmask[None, :]
        offs = base[None, :] + rr[:, None] * C
        g = h.load(gp, offs, m2, ACC64)
        if MAXIMIZE:
            g = -g
        rv = h.load(rvp, rbase[None, :] + rr[:, None], m2, ACC64)
        v = _clamp_min(h.div(rv * cv[None, :], row_mean[None, :], ACC64), eps1_sq)
        h.store(up, offs, h.div(1.0 + tl.zeros_like(v), h.sqrt(v, ACC64), ACC64) * g, m2)


@triton.jit
def _scalar_pair(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    """The scalars of the kernels below: the group's first, the tensor's first (Adafactor's
    eps1^2 and 1 - beta2_t; the apply kernels' decay and coefficient)."""
    return h.scalar(stab, 0, ACC64), h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)


@triton.jit
def _adafactor_vec(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
                   _F0: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """Params of 0 or 1 dim: ``variance = lerp(variance, g*g, w)``, ``U = g / sqrt(max(variance, eps1^2))``."""
    _, vp, up, _, _ = ptrs
    eps1_sq, w = sc
    var = h.lerp(h.load(vp, offs, mask, ACC64), g * g, w)
    h.store(vp, offs, var, mask)
    var = _clamp_min(var, eps1_sq)
    h.store(up, offs, h.div(1.0 + tl.zeros_like(var), h.sqrt(var, ACC64), ACC64) * g, mask)


@triton.jit
def _adafactor_apply(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
                     HAS_WD: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """``p = p * decay`` (if weight decay), then ``p.add_(U, alpha=coef)`` (one fma, as torch)."""
    pp, up, _, _, _ = ptrs
    decay, coef = sc
    p = h.load(pp, offs, mask, ACC64)
    if HAS_WD:
        p = p * decay
    u = h.load(up, offs, mask, ACC64)
    h.store(pp, offs, tl.fma(coef + tl.zeros_like(u), u, p), mask)


_adafactor_vec_kernel = Kernel("adafactor_vec", _adafactor_vec, _scalar_pair)
_adafactor_apply_kernel = Kernel("adafactor_apply", _adafactor_apply, _scalar_pair)


def adafactor(group, params, grads, state, grad_scale=None, found_inf=None):
    from ...adafactor import _eps1, adafactor_scalars, clip_denominator

    if amp_on_host(grads, grad_scale, found_inf):
        return
    lr, wd, d = _to_scalar(group["lr"]), group["weight_decay"], group["d"]
    eps1 = _eps1(group, params[0])  # the first param's finfo when None, as torch's for-loop
    steps = state["step"]
    foreach_increment(steps)
    # alpha from each param before weight decay (nothing is updated before the apply kernel)
    scalars = [adafactor_scalars(lr, group["beta2_decay"], group["eps"][1], s.item(), p)
               for s, p in zip(steps, params)]
    w = [s for s, _ in scalars]
    maximize = bool(group["maximize"])
    updates = [None] * len(params)
    fact = [i for i, g in enumerate(grads) if g.dim() > 1]
    vec = [i for i, g in enumerate(grads) if g.dim() <= 1]
    if fact:
        block, tile = _red_config()
        gs, _ = contiguous_stage([grads[i] for i in fact])  # read only: nothing to write back
        rvs, staged_r = contiguous_stage([state["row_var"][i] for i in fact])
        cvs, staged_c = contiguous_stage([state["col_var"][i] for i in fact])
        us = [torch.empty(g.shape, dtype=g.dtype, device=g.device) for g in gs]
        dims = [(g.shape[-2], g.shape[-1]) for g in gs]
        ws = [w[i] for i in fact]
        launch_raw(_adafactor_row_kernel, [rvs, gs], block, columns=[[c for _, c in dims], ws],
                   BLOCK=block, TILE=tile)
        launch_raw(_adafactor_col_kernel, [cvs, gs, rvs, us], block, group_scalars=[eps1, eps1 * eps1],
                   columns=[[r for r, _ in dims], [c for _, c in dims], ws],
                   BLOCK=block, TILE=tile, MAXIMIZE=maximize)
        write_back(staged_r + staged_c)
        for j, i in enumerate(fact):
            updates[i] = us[j]
    if vec:
        for i in vec:
            updates[i] = torch.empty_like(grads[i], memory_format=torch.preserve_format)
        launch(_adafactor_vec_kernel, [[grads[i] for i in vec], [state["variance"][i] for i in vec],
                                       [updates[i] for i in vec]],
               group_scalars=[eps1 * eps1], columns=[[w[i] for i in vec]], MAXIMIZE=maximize)
    coefs = [value(-alpha / clip_denominator(u, d)) for (_, alpha), u, p in zip(scalars, updates, params)]
    decay = 1 - lr * wd if wd != 0 else 1.0
    launch(_adafactor_apply_kernel, [params, updates],
           group_scalars=[value(decay)], columns=[coefs], HAS_WD=wd != 0)


# ---- Muon ------------------------------------------------------------------------------------
@triton.jit
def _muon_momentum_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    one_minus_momentum = h.scalar(stab, 0, ACC64)
    momentum = h.scalar(stab, 1, ACC64)
    return one_minus_momentum, momentum


@triton.jit
def _muon_momentum(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
                   NESTEROV: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """``buf.lerp_(g, 1 - momentum)``; the update (``g.lerp(buf, momentum)`` with Nesterov,
    else ``buf``) stored in bfloat16 into its slot of the Newton–Schulz batch. AMP: the
    grad is unscaled (and written back) by the driver, which skips the step where
    ``found_inf`` is nonzero."""
    bp, _, up, _, _ = ptrs
    one_minus_momentum, momentum = sc
    b = h.lerp(h.load(bp, offs, mask, ACC64), g, one_minus_momentum)
    h.store(bp, offs, b, mask)
    if NESTEROV:
        b = h.lerp(g, b, momentum)
    h.store(up, offs, b, mask)


@triton.jit
def _muon_apply(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
                _F0: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """``p.mul_(1 - lr * wd).add_(O, alpha=-adjusted_lr)`` (the add is one fma, as torch);
    nothing where ``found_inf`` is nonzero (the driver skips the step)."""
    pp, op, _, _, _ = ptrs
    decay, neg_lr = sc
    p = h.load(pp, offs, mask, ACC64) * decay
    o = h.load(op, offs, mask, ACC64)
    h.store(pp, offs, tl.fma(neg_lr + tl.zeros_like(o), o, p), mask)


_muon_momentum_kernel = Kernel("muon_momentum", _muon_momentum, _muon_momentum_scalars)
_muon_apply_kernel = Kernel("muon_apply", _muon_apply, _scalar_pair)


def muon(group, params, grads, state, grad_scale=None, found_inf=None):
    from ...muon import adjust_lr, zeropower_via_newtonschulz

    # AMP on the device, no host sync: the momentum kernel unscales the grads (writing them
    # back, as torch's fused optimizers leave them) and both kernels do nothing where
    # found_inf is nonzero (Newton–Schulz then runs on an unwritten batch, unused)
    lr, wd, momentum = _to_scalar(group["lr"]), group["weight_decay"], group["momentum"]
    # scalars first: a shape adjust_lr refuses raises before anything changed
    neg_lrs = [value(-adjust_lr(lr, group["adjust_lr_fn"], p.shape)) for p in params]
    by_shape: dict[tuple, list[int]] = {}
    for i, g in enumerate(grads):
        by_shape.setdefault((g.device, tuple(g.shape)), []).append(i)
    slots: list = [None] * len(params)
    batches = []
    for (device, shape), idx in by_shape.items():
        batch = torch.empty((len(idx), *shape), dtype=torch.bfloat16, device=device)
        for j, i in enumerate(idx):
            slots[i] = batch[j]
        batches.append((batch, idx))
    launch(_muon_momentum_kernel, [state["momentum_buffer"], grads, slots],
           group_scalars=[1 - momentum, momentum], grad_scale=grad_scale, found_inf=found_inf,
           NESTEROV=bool(group["nesterov"]))
    ortho: list = [None] * len(params)
    coeffs, steps, eps = group["ns_coefficients"], group["ns_steps"], group["eps"]
    for batch, idx in batches:
        if len(idx) == 1:  # the for-loop's 2-D path (addmm)
            out = zeropower_via_newtonschulz(batch[0], coeffs, steps, eps)
            ortho[idx[0]] = out
        else:
            out = zeropower_via_newtonschulz(batch, coeffs, steps, eps)
            for j, i in enumerate(idx):
                ortho[i] = out[j]
    decay = 1 - lr * wd
    launch(_muon_apply_kernel, [params, ortho],
           group_scalars=[value(decay)], columns=[neg_lrs], found_inf=found_inf)
