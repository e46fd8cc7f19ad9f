"""Adagrad, RMSprop (centered, momentum) and Adadelta as fused multi-tensor kernels."""

from __future__ import annotations

import triton
import triton.language as tl

from ...adadelta import adadelta_group_scalars
from ...optimizer import _to_scalar
from ...rmsprop import rmsprop_group_scalars
from . import _helpers as h
from ._elementwise import Kernel
from ._host import commit_steps, next_steps, per_tensor
from ._launcher import launch


@triton.jit
def _adagrad_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    wd = h.scalar(stab, 0, ACC64)
    eps = h.scalar(stab, 1, ACC64)
    clr = h.tensor_scalar(stab, N_GROUP, N_PER, ti, 0, ACC64)
    return wd, eps, clr


@triton.jit
def _adagrad(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
             HAS_WD: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """g += wd * p; sum += g * g; p -= clr * g / (sqrt(sum) + eps)."""
    pp, _, sp, _, _ = ptrs
    wd, eps, clr = sc
    p = h.load(pp, offs, mask, ACC64)
    if HAS_WD:
        g = h.add_decay(g, p, wd)
    s = tl.fma(g, g, h.load(sp, offs, mask, ACC64))  # state_sum.addcmul_(grad, grad, value=1)
    h.store(sp, offs, s, mask)
    std = h.sqrt(s, ACC64) + eps
    h.store(pp, offs, p - clr * h.div(g, std, ACC64), mask)


_adagrad_kernel = Kernel("adagrad", _adagrad, _adagrad_scalars)


def adagrad(group, params, grads, state, grad_scale=None, found_inf=None):
    """Adagrad's host: the scalars of ``adagrad_scalars`` (per tensor) and
    ``adagrad_group_scalars`` (the table's group scalars, in the cpp kernel's order), passed on."""
    from ...adagrad import adagrad_group_scalars, adagrad_scalars

    lr, wd = _to_scalar(group["lr"]), group["weight_decay"]
    steps = state["step"]
    nxt = next_steps(steps, group.get("capturable", False))
    launch(
        _adagrad_kernel, [params, grads, state["sum"]],
        group_scalars=list(adagrad_group_scalars(wd, group["eps"])),
        columns=per_tensor(adagrad_scalars, nxt, lr, group["lr_decay"]),
        grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), HAS_WD=wd != 0,
    )
    commit_steps(steps, found_inf, nxt)


@triton.jit
def _rmsprop_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    # rmsprop_group_scalars
    lr = h.scalar(stab, 0, ACC64)
    alpha = h.scalar(stab, 1, ACC64)
    one_minus_alpha = h.scalar(stab, 2, ACC64)
    eps = h.scalar(stab, 3, ACC64)
    wd = h.scalar(stab, 4, ACC64)
    momentum = h.scalar(stab, 5, ACC64)
    return lr, alpha, one_minus_alpha, eps, wd, momentum


@triton.jit
def _rmsprop(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
             HAS_WD: tl.constexpr, MOMENTUM: tl.constexpr, CENTERED: tl.constexpr):
    """g += wd * p; v = alpha * v + (1 - alpha) * g^2; avg = sqrt(v - gavg^2) + eps with
    gavg = lerp(gavg, g, 1 - alpha) (centered), else sqrt(v) + eps; with momentum
    b = momentum * b + g / avg, p -= lr * b, else p -= lr * g / avg."""
    pp, _, vp, bp, gavgp = ptrs
    lr, alpha, one_minus_alpha, eps, wd, momentum = sc
    p = h.load(pp, offs, mask, ACC64)
    # Rounded op by op as torch's for-loop: add(alpha=)/addcmul are one fused
    # multiply-add in torch's kernels, addcdiv is ``self + (value * t1) / t2``.
    if HAS_WD:
        g = h.add_decay(g, p, wd)
    v = h.ema_sq(h.load(vp, offs, mask, ACC64), g, alpha, one_minus_alpha)
    h.store(vp, offs, v, mask)
    if CENTERED:
        gavg = h.lerp(h.load(gavgp, offs, mask, ACC64), g, one_minus_alpha)
        h.store(gavgp, offs, gavg, mask)
        # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_().add_(eps)
        avg = h.sqrt(tl.fma(-gavg, gavg, v), ACC64) + eps
    else:
        avg = h.sqrt(v, ACC64) + eps
    if MOMENTUM:
        b = h.load(bp, offs, mask, ACC64) * momentum + h.div(g, avg, ACC64)
        h.store(bp, offs, b, mask)
        p = tl.fma(-lr + tl.zeros_like(b), b, p)  # param.add_(buf, alpha=-lr)
    else:
        p = p - h.div(lr * g, avg, ACC64)  # param.addcdiv_(grad, avg, value=-lr)
    h.store(pp, offs, p, mask)


_rmsprop_kernel = Kernel("rmsprop", _rmsprop, _rmsprop_scalars)


def rmsprop(group, params, grads, state, grad_scale=None, found_inf=None):
    wd, momentum, centered = group["weight_decay"], group["momentum"], group["centered"]
    launch(
        _rmsprop_kernel,
        [params, grads, state["square_avg"], state["momentum_buffer"] if momentum > 0 else None,
         state["grad_avg"] if centered else None],
        group_scalars=list(rmsprop_group_scalars(_to_scalar(group["lr"]), group["alpha"], group["eps"], wd,
                                                 momentum)),
        grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), HAS_WD=wd != 0, MOMENTUM=momentum > 0,
        CENTERED=bool(centered),
    )
    commit_steps(state["step"], found_inf)


@triton.jit
def _adadelta_scalars(stab, ti, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr):
    # adadelta_group_scalars
    lr = h.scalar(stab, 0, ACC64)
    rho = h.scalar(stab, 1, ACC64)
    one_minus_rho = h.scalar(stab, 2, ACC64)
    eps = h.scalar(stab, 3, ACC64)
    wd = h.scalar(stab, 4, ACC64)
    return lr, rho, one_minus_rho, eps, wd


@triton.jit
def _adadelta(ptrs, offs, mask, g, sc, ACC64: tl.constexpr,
              HAS_WD: tl.constexpr, _F1: tl.constexpr, _F2: tl.constexpr):
    """g += wd * p; v = rho * v + (1 - rho) * g^2; delta = sqrt(u + eps) / sqrt(v + eps) * g;
    u = rho * u + (1 - rho) * delta^2; p -= lr * delta."""
    pp, _, vp, up, _ = ptrs
    lr, rho, one_minus_rho, eps, wd = sc
    p = h.load(pp, offs, mask, ACC64)
    if HAS_WD:
        g = h.add_decay(g, p, wd)
    v = h.ema_sq(h.load(vp, offs, mask, ACC64), g, rho, one_minus_rho)
    h.store(vp, offs, v, mask)
    std = h.sqrt(v + eps, ACC64)
    u = h.load(up, offs, mask, ACC64)
    delta = h.div(h.sqrt(u + eps, ACC64), std, ACC64) * g
    h.store(up, offs, h.ema_sq(u, delta, rho, one_minus_rho), mask)
    h.store(pp, offs, p - lr * delta, mask)


_adadelta_kernel = Kernel("adadelta", _adadelta, _adadelta_scalars)


def adadelta(group, params, grads, state, grad_scale=None, found_inf=None):
    wd = group["weight_decay"]
    launch(
        _adadelta_kernel, [params, grads, state["square_avg"], state["acc_delta"]],
        group_scalars=list(adadelta_group_scalars(_to_scalar(group["lr"]), group["rho"], group["eps"], wd)),
        grad_scale=grad_scale, found_inf=found_inf,
        MAXIMIZE=bool(group["maximize"]), HAS_WD=wd != 0,
    )
    commit_steps(state["step"], found_inf)
