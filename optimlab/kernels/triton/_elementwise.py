"""The one elementwise driver: every elementwise kernel is it, with its per-element op.

The driver does what every elementwise update shares (as ``csrc/fused_apply.h`` does for
the C++ kernels): skip the step where AMP's ``found_inf`` is nonzero, decode the program's
launch-table entry, cast each role's address to a typed pointer, load the op's scalars
once, then loop over the chunk's blocks, loading the grad (unscaled, and written back,
with AMP; negated with ``MAXIMIZE``) and calling the op on each block. An op is a pair of
``@triton.jit`` functions, passed as ``tl.constexpr`` (each pair compiles its own kernel):

* ``SCALARS(stab, ti, N_GROUP, N_PER, ACC64) -> tuple``: the group and per-tensor scalars
  it needs (loaded before the loop: loads inside it would be repeated per block, since a
  load cannot be moved past the loop's stores);
* ``OP(ptrs, offs, mask, g, sc, ACC64, F0, F1, F2)``: loads the other roles it reads from
  ``ptrs`` (a tuple, one pointer per role), computes, stores. ``F0..F2`` are its
  constexpr flags, in the order of its ``flags`` in :data:`._table.ELEMENTWISE`.

Pointers of roles the op does not use are dead code (the compiler drops their table
loads), so the compiled kernel loads and stores what the hand-written one did.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _helpers as h
from ._table import ELEMENTWISE, N_FLAGS, N_REFS


@triton.jit
def _role_ptr(itab, k: tl.constexpr, N_ROLES: tl.constexpr, n_tensors, ti, ref, ALIGNED: tl.constexpr):
    """Role ``k``'s pointer (``ref`` itself past the launch's roles: never used)."""
    if k < N_ROLES:
        return h.tensor_ptr(itab, k, n_tensors, ti, ref, ALIGNED)
    else:
        return ref


@triton.jit
def elementwise_kernel(
    itab, stab, grad_scale, found_inf, n_tensors, n_entries,
    ref0, ref1, ref2, ref3, ref4,
    OP: tl.constexpr, SCALARS: tl.constexpr,
    N_ROLES: tl.constexpr, N_GROUP: tl.constexpr, N_PER: tl.constexpr, ACC64: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ALIGNED: tl.constexpr, GRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
    F0: tl.constexpr, F1: tl.constexpr, F2: tl.constexpr,
):
    if h.skip_step(found_inf, HAS_INF):
        return
    ti, start, numel = h.entry(itab, N_ROLES, n_tensors, n_entries, ALIGNED)
    ptrs = (
        _role_ptr(itab, 0, N_ROLES, n_tensors, ti, ref0, ALIGNED),
        _role_ptr(itab, 1, N_ROLES, n_tensors, ti, ref1, ALIGNED),
        _role_ptr(itab, 2, N_ROLES, n_tensors, ti, ref2, ALIGNED),
        _role_ptr(itab, 3, N_ROLES, n_tensors, ti, ref3, ALIGNED),
        _role_ptr(itab, 4, N_ROLES, n_tensors, ti, ref4, ALIGNED),
    )
    sc = SCALARS(stab, ti, N_GROUP, N_PER, ACC64)
    for it in range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        if GRAD >= 0:
            g = h.grad_in(ptrs[GRAD], offs, mask, grad_scale, HAS_SCALE, MAXIMIZE, ACC64)
        else:
            g = 0.0
        OP(ptrs, offs, mask, g, sc, ACC64, F0, F1, F2)


class Kernel:
    """The driver bound to one op of :data:`._table.ELEMENTWISE`, launched like a kernel
    (``kernel[grid](*args, **kwargs)``, ``kernel.warmup``): the launcher passes the roles'
    reference pointers and the flags by name; this pads the pointers to the driver's five
    and puts the op, its grad role and its flags (``F0..F2``) in."""

    def __init__(self, name: str, op, scalars) -> None:
        self.spec = ELEMENTWISE[name]
        self.__name__ = f"_{name}_kernel"
        self.op, self.scalars = op, scalars
        self.arg_names = elementwise_kernel.arg_names

    def constexprs(self, flags: dict) -> dict:
        """The driver's op constexprs for ``flags`` (every flag of the op, by name; a flag
        left out is 0)."""
        own = [f for f in self.spec.flags if f != "MAXIMIZE"]
        slots = [flags.get(f, 0) for f in own] + [0] * (N_FLAGS - len(own))
        return dict(OP=self.op, SCALARS=self.scalars, GRAD=self.spec.grad,
                    MAXIMIZE=bool(flags.get("MAXIMIZE", False)),
                    **{f"F{i}": v for i, v in enumerate(slots)})

    def _call(self, args, kwargs):
        flags = {f: kwargs.pop(f) for f in self.spec.flags if f in kwargs}
        refs = args[6:]
        return (*args, *refs[:1] * (N_REFS - len(refs))), {**kwargs, **self.constexprs(flags)}

    def __getitem__(self, grid):
        launch = elementwise_kernel[grid]

        def run(*args, **kwargs):
            args, kwargs = self._call(args, kwargs)
            return launch(*args, **kwargs)

        return run

    def warmup(self, *args, grid, **kwargs):
        args, kwargs = self._call(args, kwargs)
        return elementwise_kernel.warmup(*args, grid=grid, **kwargs)
