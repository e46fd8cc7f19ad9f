"""The low-precision write-back of :mod:`optimlab.low_precision` as one Triton kernel.

Float32 working copies written into bfloat16/float16 params: rounded to nearest, with Kahan
compensation, or stochastically (bfloat16), bit for bit the torch reference there
(``kahan_write``, ``stochastic_round``, ``copy_``), which stays the definition. One launch
per tensor (params are few and large where this matters). Imports Triton: imported only
when a write-back runs it.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["supports", "write"]

NEAREST, KAHAN, STOCHASTIC = 0, 1, 2
_BLOCK = 1024


@triton.jit
def _bf16_rn(x, NAN_BITS: tl.constexpr):
    """float32 -> bfloat16 bits (int32 holding 16) rounded to nearest-even by bit ops, NaN ->
    ``NAN_BITS`` (torch's own conversion's NaN on the device, see :func:`_nan_bits`)."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return tl.where(x != x, NAN_BITS, r.to(tl.int32))


# (counters change every step: not specialized, so one compiled kernel serves them all)
@triton.jit(do_not_specialize=["n", "seed", "step_lo", "step_hi", "index_base"])
def _write_kernel(p_ptr, w_ptr, c_ptr, n, seed, step_lo, step_hi, index_base,
                  MODE: tl.constexpr, HALF: tl.constexpr, NAN_BITS: tl.constexpr,
                  BLOCK: tl.constexpr):
    # p_ptr, c_ptr: int16 views of bfloat16 tensors (their bits), float16 tensors as such
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    if MODE == 2:  # stochastic, bfloat16: upper 16 bits of bits(w) + (philox word 0 & 0xFFFF)
        idx = offs + index_base
        c0 = (idx & 0xFFFFFFFF).to(tl.uint32)
        c1 = (idx >> 32).to(tl.uint32)
        c2 = tl.zeros_like(c0) + step_lo.to(tl.uint32)
        c3 = tl.zeros_like(c0) + step_hi.to(tl.uint32)
        r, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
        top = (w.to(tl.uint32, bitcast=True) + (r & 0xFFFF)) >> 16
        out = tl.where(w != w, NAN_BITS, top.to(tl.int32))
        tl.store(p_ptr + offs, out.to(tl.int16), mask=m)
    elif HALF:
        if MODE == 1:  # Kahan: every operation in float32, in the reference's order
            p32 = tl.load(p_ptr + offs, mask=m).to(tl.float32)
            y = tl.load(c_ptr + offs, mask=m).to(tl.float32) + (w - p32)
            t = (p32 + y).to(tl.float16)
            tl.store(c_ptr + offs, (y - (t.to(tl.float32) - p32)).to(tl.float16), mask=m)
            tl.store(p_ptr + offs, t, mask=m)
        else:
            tl.store(p_ptr + offs, w.to(tl.float16), mask=m)
    else:
        if MODE == 1:
            pb = tl.load(p_ptr + offs, mask=m).to(tl.int32) & 0xFFFF
            cb = tl.load(c_ptr + offs, mask=m).to(tl.int32) & 0xFFFF
            p32 = (pb << 16).to(tl.float32, bitcast=True)
            y = (cb << 16).to(tl.float32, bitcast=True) + (w - p32)
            t = _bf16_rn(p32 + y, NAN_BITS)
            c = _bf16_rn(y - ((t << 16).to(tl.float32, bitcast=True) - p32), NAN_BITS)
            tl.store(c_ptr + offs, c.to(tl.int16), mask=m)
            tl.store(p_ptr + offs, t.to(tl.int16), mask=m)
        else:
            tl.store(p_ptr + offs, _bf16_rn(w, NAN_BITS).to(tl.int16), mask=m)


@functools.lru_cache(maxsize=None)
def _nan_bits(device: torch.device) -> int:
    """The bits torch's float32 -> bfloat16 conversion gives a NaN on ``device`` (one value,
    whatever the sign or payload: 0x7FFF on CUDA, 0xFFFF or 0x7FC0 on the CPU by its
    instruction set), as a signed int16 value."""
    nan = torch.full((64,), float("nan"), device=device)
    return int(nan.to(torch.bfloat16).view(torch.int16)[0])


def supports(p: Tensor, w: Tensor, comp: Tensor | None, mode: int) -> bool:
    """Whether :func:`write` takes these tensors (else the caller uses the torch path):
    contiguous, same shape, not 0-dim (torch converts those another way on the CPU)."""
    ts = (p, w) if comp is None else (p, w, comp)
    return (p.dim() > 0 and w.dtype == torch.float32 and all(t.is_contiguous() for t in ts)
            and w.shape == p.shape and (comp is None or (comp.shape == p.shape and comp.dtype == p.dtype))
            and (p.dtype == torch.bfloat16 or (p.dtype == torch.float16 and mode != STOCHASTIC))
            and all(t.device == p.device for t in ts))


def write(p: Tensor, w: Tensor, comp: Tensor | None, mode: int, seed: int = 0, step: int = 0,
          index_base: int = 0) -> None:
    """Write float32 ``w`` into ``p`` in place (``mode``: NEAREST, KAHAN with ``comp``, or
    STOCHASTIC with the Philox key ``seed`` and counters (``index_base`` + element index,
    ``step``)); :func:`supports` must hold."""
    n = p.numel()
    if n == 0:
        return
    half = p.dtype == torch.float16
    pv = p if half else p.view(torch.int16)
    cv = pv if comp is None else (comp if half else comp.view(torch.int16))
    step &= (1 << 64) - 1
    with torch.cuda.device(p.device) if p.is_cuda else contextlib.nullcontext():
        _write_kernel[(triton.cdiv(n, _BLOCK),)](
            pv, w, cv, n, seed & ((1 << 64) - 1), step & 0xFFFFFFFF, step >> 32, index_base,
            MODE=mode, HALF=half, NAN_BITS=_nan_bits(p.device), BLOCK=_BLOCK)
    # as torch's in-place writes: autograd notices a param changed after being saved
    torch.autograd.graph.increment_version([p] if comp is None else [p, comp])

