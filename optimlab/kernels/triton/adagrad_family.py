"""Adagrad, RMSprop (centered, momentum) and Adadelta as fused multi-tensor kernels."""

from __future__ import annotations

import triton
import triton.language as tl

from ...optimizer import _to_scalar
from . import _helpers as h
from ._host import commit_steps, next_steps, per_tensor, value
from ._launcher import launch


@triton.jit
def _adagrad_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    p_ref, g_ref, sum_ref,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ALIGNED: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
):
    if h.skip_step(found_inf, HAS_INF):
        return
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, ALIGNED)
    pp = h.tensor_ptr(itab, 0, n_tensors, ti, p_ref, ALIGNED)
    gp = h.tensor_ptr(itab, 1, n_tensors, ti, g_ref, ALIGNED)
    sp = h.tensor_ptr(itab, 2, n_tensors, ti, sum_ref, ALIGNED)
    wd = h.scalar(stab, 0, ACC64)
    eps = h.scalar(stab, 1, ACC64)
    neg_clr = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    for it in range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        p = h.load(pp, offs, mask, ACC64)
        g = h.grad_in(gp, offs, mask, grad_scale, HAS_SCALE, MAXIMIZE, ACC64)
        if HAS_WD:
            g = h.add_decay(g, p, wd)
        s = tl.fma(g, g, h.load(sp, offs, mask, ACC64))  # state_sum.addcmul_(grad, grad, value=1)
        h.store(sp, offs, s, mask)
        std = h.sqrt(s, ACC64) + eps
        h.store(pp, offs, p + neg_clr * h.div(g, std, ACC64), mask)


def _neg_clr(lr, lr_decay, step):
    from ...adagrad import adagrad_clr

    return (-adagrad_clr(lr, lr_decay, step),)


def adagrad(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, wd = _to_scalar(group["lr"]), group["weight_decay"]
    steps = state["step"]
    nxt = next_steps(steps, group.get("capturable", False))
    columns = per_tensor(_neg_clr, nxt, lr, group["lr_decay"])
    launch(
        _adagrad_kernel, [params, grads, state["sum"]], written=(0, 1, 2),
        group_scalars=[value(wd, params[0]), group["eps"]], columns=columns,
        grad_scale=grad_scale, found_inf=found_inf, persistent=(0, 2),
        MAXIMIZE=bool(group["maximize"]), HAS_WD=wd != 0,
    )
    commit_steps(steps, found_inf, nxt)


@triton.jit
def _rmsprop_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    p_ref, g_ref, v_ref, buf_ref, gavg_ref,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ALIGNED: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, MOMENTUM: tl.constexpr, CENTERED: tl.constexpr,
):
    if h.skip_step(found_inf, HAS_INF):
        return
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, ALIGNED)
    pp = h.tensor_ptr(itab, 0, n_tensors, ti, p_ref, ALIGNED)
    gp = h.tensor_ptr(itab, 1, n_tensors, ti, g_ref, ALIGNED)
    vp = h.tensor_ptr(itab, 2, n_tensors, ti, v_ref, ALIGNED)
    neg_lr = h.scalar(stab, 0, ACC64)
    alpha = h.scalar(stab, 1, ACC64)
    one_minus_alpha = h.scalar(stab, 2, ACC64)
    eps = h.scalar(stab, 3, ACC64)
    wd = h.scalar(stab, 4, ACC64)
    momentum = h.scalar(stab, 5, ACC64)
    for it in range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        p = h.load(pp, offs, mask, ACC64)
        g = h.grad_in(gp, offs, mask, grad_scale, HAS_SCALE, MAXIMIZE, ACC64)
        # Rounded op by op as torch's for-loop: add(alpha=)/addcmul are one fused
        # multiply-add in torch's kernels, addcdiv is ``self + (value * t1) / t2``.
        if HAS_WD:
            g = h.add_decay(g, p, wd)
        v = h.ema_sq(h.load(vp, offs, mask, ACC64), g, alpha, one_minus_alpha)
        h.store(vp, offs, v, mask)
        if CENTERED:
            gavgp = h.tensor_ptr(itab, 4, n_tensors, ti, gavg_ref, ALIGNED)
            gavg = h.lerp(h.load(gavgp, offs, mask, ACC64), g, one_minus_alpha)
            h.store(gavgp, offs, gavg, mask)
            # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_().add_(eps)
            avg = h.sqrt(tl.fma(-gavg, gavg, v), ACC64) + eps
        else:
            avg = h.sqrt(v, ACC64) + eps
        if MOMENTUM:
            bp = h.tensor_ptr(itab, 3, n_tensors, ti, buf_ref, ALIGNED)
            b = h.load(bp, offs, mask, ACC64) * momentum + h.div(g, avg, ACC64)
            h.store(bp, offs, b, mask)
            p = tl.fma(neg_lr + tl.zeros_like(b), b, p)  # param.add_(buf, alpha=-lr)
        else:
            p = p + h.div(neg_lr * g, avg, ACC64)  # param.addcdiv_(grad, avg, value=-lr)
        h.store(pp, offs, p, mask)


def rmsprop(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, alpha, wd = _to_scalar(group["lr"]), group["alpha"], group["weight_decay"]
    momentum, centered = group["momentum"], group["centered"]
    ref = params[0]
    launch(
        _rmsprop_kernel,
        [params, grads, state["square_avg"], state["momentum_buffer"] if momentum > 0 else None,
         state["grad_avg"] if centered else None],
        written=(0, 1, 2, 3, 4),
        group_scalars=[-value(lr, ref), alpha, 1 - alpha, group["eps"], value(wd, ref), momentum],
        grad_scale=grad_scale, found_inf=found_inf, persistent=(0, 2, 3, 4),
        MAXIMIZE=bool(group["maximize"]), HAS_WD=wd != 0, MOMENTUM=momentum > 0,
        CENTERED=bool(centered),
    )
    commit_steps(state["step"], found_inf)


@triton.jit
def _adadelta_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    p_ref, g_ref, v_ref, u_ref,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ALIGNED: tl.constexpr,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
):
    if h.skip_step(found_inf, HAS_INF):
        return
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, ALIGNED)
    pp = h.tensor_ptr(itab, 0, n_tensors, ti, p_ref, ALIGNED)
    gp = h.tensor_ptr(itab, 1, n_tensors, ti, g_ref, ALIGNED)
    vp = h.tensor_ptr(itab, 2, n_tensors, ti, v_ref, ALIGNED)
    up = h.tensor_ptr(itab, 3, n_tensors, ti, u_ref, ALIGNED)
    neg_lr = h.scalar(stab, 0, ACC64)
    rho = h.scalar(stab, 1, ACC64)
    one_minus_rho = h.scalar(stab, 2, ACC64)
    eps = h.scalar(stab, 3, ACC64)
    wd = h.scalar(stab, 4, ACC64)
    for it in range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        p = h.load(pp, offs, mask, ACC64)
        g = h.grad_in(gp, offs, mask, grad_scale, HAS_SCALE, MAXIMIZE, ACC64)
        if HAS_WD:
            g = h.add_decay(g, p, wd)
        v = h.ema_sq(h.load(vp, offs, mask, ACC64), g, rho, one_minus_rho)
        h.store(vp, offs, v, mask)
        std = h.sqrt(v + eps, ACC64)
        u = h.load(up, offs, mask, ACC64)
        delta = h.div(h.sqrt(u + eps, ACC64), std, ACC64) * g
        h.store(up, offs, h.ema_sq(u, delta, rho, one_minus_rho), mask)
        h.store(pp, offs, p + neg_lr * delta, mask)


def adadelta(group, params, grads, state, grad_scale=None, found_inf=None):
    lr, rho, wd = _to_scalar(group["lr"]), group["rho"], group["weight_decay"]
    ref = params[0]
    launch(
        _adadelta_kernel, [params, grads, state["square_avg"], state["acc_delta"]],
        written=(0, 1, 2, 3),
        group_scalars=[-value(lr, ref), rho, 1 - rho, group["eps"], value(wd, ref)],
        grad_scale=grad_scale, found_inf=found_inf, persistent=(0, 2, 3),
        MAXIMIZE=bool(group["maximize"]), HAS_WD=wd != 0,
    )
    commit_steps(state["step"], found_inf)
