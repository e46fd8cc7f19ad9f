"""``@triton.jit`` building blocks shared by every optimlab Triton kernel.

Conventions (see docs/triton-backend.md):

* one program handles one *(tensor, chunk)* entry of the launch table built by
  :mod:`._launcher`; :func:`entry` decodes it;
* tensors are addressed through a packed ``int64`` table of base addresses
  (``data_ptr``), one row per role (param, grad, state...), cast back to typed
  pointers with the element type of a *reference* pointer argument of the role;
* math runs in fp32 (fp64 when the param is fp64: ``ACC64``), whatever the storage
  dtype; loads widen, :func:`store` narrows;
* host scalars arrive in one fp64 table: group scalars first, then one row of
  per-tensor scalars (``scalar``/``tensor_scalar``).
"""

from __future__ import annotations

import triton
import triton.language as tl


#: what ``ALIGNED`` promises (checked on the host, :func:`._launcher.aligned`): every address
#: in the table is a multiple of ALIGN_BYTES, every numel and chunk start of ALIGN_ELEMS
ALIGN_BYTES = tl.constexpr(16)
ALIGN_ELEMS = tl.constexpr(8)


@triton.jit
def entry(itab, N_ROLES: tl.constexpr, n_tensors, n_entries, ALIGNED: tl.constexpr):
    """``(tensor index, first element of the chunk, numel)`` of this program's entry.

    ``ALIGNED``: numels and starts are multiples of ``ALIGN_ELEMS``, so that a mask
    ``offs < numel`` is constant over 16-byte vectors (the compiler may then vectorize)."""
    pid = tl.program_id(0)
    base = N_ROLES * n_tensors + n_tensors
    ti = tl.load(itab + base + pid)
    start = tl.load(itab + base + n_entries + pid)
    numel = tl.load(itab + N_ROLES * n_tensors + ti)
    if ALIGNED:
        start = tl.multiple_of(start, ALIGN_ELEMS)
        numel = tl.multiple_of(numel, ALIGN_ELEMS)
    return ti, start, numel


@triton.jit
def tensor_ptr(itab, role, n_tensors, ti, ref, ALIGNED: tl.constexpr):
    """Typed base pointer of tensor ``ti`` in row ``role`` (element type of ``ref``).

    An address read from the table hides its alignment from the compiler (which then
    issues one load per element); ``ALIGNED`` states it, so loads and stores can be
    128-bit vectors (``ld.global.v4``)."""
    ptr = tl.load(itab + role * n_tensors + ti).to(ref.dtype)
    if ALIGNED:  # on the pointer: a hint on the integer does not survive the cast
        ptr = tl.multiple_of(ptr, ALIGN_BYTES)
    return ptr


@triton.jit
def acc(x, ACC64: tl.constexpr):
    """``x`` in the compute dtype (fp64 for fp64 params, fp32 otherwise)."""
    if ACC64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def scalar(stab, k, ACC64: tl.constexpr):
    """Group scalar ``k`` of the fp64 scalar table, in the compute dtype."""
    return acc(tl.load(stab + k), ACC64)


@triton.jit
def tensor_scalar(stab, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ti, k, ACC64: tl.constexpr):
    """Per-tensor scalar ``k`` of tensor ``ti``."""
    return acc(tl.load(stab + N_GROUP + ti * N_PER + k), ACC64)


@triton.jit
def load(ptr, offs, mask, ACC64: tl.constexpr):
    return acc(tl.load(ptr + offs, mask=mask, other=0), ACC64)


@triton.jit
def bf16_rne(x):
    """``x`` (fp32) rounded to bfloat16, to nearest even, as torch rounds (NaN -> 0x7FC0).

    Done on the bits: Triton's interpreter truncates fp32 -> bf16 casts (its ``rtne``
    mode rounds ties up), so a cast would not match torch nor the compiled kernel."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def store(ptr, offs, val, mask):
    """Store in the pointer's dtype; bf16 via fp32 (as torch casts fp64 -> bf16), rounded
    to nearest even by :func:`bf16_rne`."""
    if ptr.dtype.element_ty == tl.bfloat16:
        tl.store(ptr + offs, bf16_rne(val.to(tl.float32)), mask=mask)
    else:
        tl.store(ptr + offs, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def sqrt(x, ACC64: tl.constexpr):
    """IEEE-rounded square root (as torch's)."""
    if ACC64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def div(a, b, ACC64: tl.constexpr):
    """IEEE-rounded division (Triton's default fp32 ``/`` is approximate)."""
    if ACC64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def skip_step(found_inf, HAS_INF: tl.constexpr):
    """True when AMP found an inf/nan in the grads: the whole step is skipped."""
    if HAS_INF:
        return tl.load(found_inf) != 0
    else:
        return False


@triton.jit
def grad_in(gp, offs, mask, grad_scale, HAS_SCALE: tl.constexpr, MAXIMIZE: tl.constexpr,
            ACC64: tl.constexpr):
    """Load the grad; unscale it (AMP: the unscaled grad is written back, as torch's fused
    optimizers do); negate it for ``maximize``."""
    g = load(gp, offs, mask, ACC64)
    if HAS_SCALE:
        g = div(g, acc(tl.load(grad_scale), ACC64), ACC64)
        store(gp, offs, g, mask)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit
def add_decay(g, p, wd):
    """grad.add(param, alpha=wd), coupled (L2) weight decay: ATen's add with alpha is one
    fused multiply-add, so one rounding here too."""
    return tl.fma(wd + tl.zeros_like(p), p, g)


@triton.jit
def weight_decay(p, g, wd, decay, WD_MODE: tl.constexpr):
    """Weight decay: 0 none; 1 L2 (``g += wd * p``); 2 decoupled (``p *= decay``,
    ``decay = 1 - lr * wd`` computed on the host). Returns ``(p, g)``."""
    if WD_MODE == 1:
        g = add_decay(g, p, wd)
    elif WD_MODE == 2:
        p = p * decay
    return p, g


@triton.jit
def lerp(a, b, w):
    """``torch.lerp(a, b, w)`` with torch's formula, fused multiply-adds included (as its
    vectorised CPU kernel and its CUDA kernel compute it; exact at w = 0 and w = 1)."""
    d = b - a
    ww = w + tl.zeros_like(d)
    return tl.where(tl.abs(ww) < 0.5, tl.fma(ww, d, a), tl.fma(ww - 1, d, b))


@triton.jit
def ema_sq(v, g, beta, one_minus_beta):
    """``v.mul_(beta).addcmul_(g, g, value=1 - beta)`` (second moment), rounded as torch's
    addcmul rounds it: ``fma(value * g, g, v * beta)`` (its CPU and CUDA kernels contract
    ``self + value * t1 * t2`` into one fused multiply-add)."""
    return tl.fma(one_minus_beta * g, g, v * beta)
