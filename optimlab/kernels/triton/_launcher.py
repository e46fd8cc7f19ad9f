"""Host side of the Triton backend: multi-tensor launches over (tensor, chunk) tables.

One launch updates every tensor of a param group that shares a device and a dtype
signature (the dtype of each role: param, grad, state...). The kernel receives

* ``itab`` (int64): ``[roles x n]`` base addresses, ``[n]`` numels, ``[E]`` tensor
  index and ``[E]`` first element of each entry (a chunk of ``BLOCK * ITERS``
  elements). Cached on the device, keyed by the addresses, so a steady-state step
  copies no table;
* ``stab`` (fp64): group scalars, then ``[n x K]`` per-tensor scalars. Built on the
  host from Python numbers (one small copy) or, when a scalar is a device tensor
  (capturable, Tensor lr on the device, fused step counters), stacked on the
  device without a host sync;
* one *reference* pointer per role (the bucket's first tensor of that role), whose
  element type the kernel casts the table's addresses to.

Offsets are int64 throughout, so tensors beyond 2**31 elements are addressed
correctly. Params that are not dense (or whose grad/state have other strides) are
staged through contiguous copies and written back after the launch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor

from . import KernelCompileError, interpreting

#: elements per block and blocks per program (a chunk is BLOCK * ITERS elements)
BLOCK = 1024
ITERS = 4
INTERPRET_BLOCK = 128  # interpreted kernels: smaller blocks are faster in numpy
INTERPRET_ITERS = 1
NUM_WARPS = 4

_TABLE_CACHE: "OrderedDict[tuple, Tensor]" = OrderedDict()
_TABLE_CACHE_SIZE = 64
_COMPILED: set[tuple] = set()

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def chunk_config() -> tuple[int, int]:
    if interpreting():
        return INTERPRET_BLOCK, INTERPRET_ITERS
    return BLOCK, ITERS


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense (any permutation of a contiguous layout)."""
    if t.is_contiguous():
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class _Bucket:
    """Tensors of one launch, staged so that every role shares the param's layout.

    A dense param (any permutation of a contiguous layout) is used in place, and so is
    every grad/state tensor with its strides; others are copied into that layout. A
    non-dense param is staged, with all its roles, through contiguous copies. Staged
    tensors of written roles are copied back by :meth:`finish`."""

    def __init__(self, indices: list[int], roles: Sequence[Sequence[Tensor | None]]):
        self.indices = indices
        self.roles: list[list[Tensor | None]] = [[] for _ in roles]
        self._staged: list[list[tuple[Tensor, Tensor]]] = [[] for _ in roles]
        for i in indices:
            p = roles[0][i]
            p_dense = _dense(p)
            for k, r in enumerate(roles):
                t = r[i]
                if t is not None and not (p_dense and t.stride() == p.stride()):
                    if p_dense:
                        s = torch.empty_like(p, dtype=t.dtype, memory_format=torch.preserve_format)
                    else:
                        s = torch.empty(p.shape, dtype=t.dtype, device=t.device)
                    s.copy_(t)
                    self._staged[k].append((t, s))
                    t = s
                self.roles[k].append(t)

    def finish(self, written: Sequence[int]) -> None:
        for k in written:
            for orig, staged in self._staged[k]:
                orig.copy_(staged)


def buckets(roles: Sequence[Sequence[Tensor | None]]) -> list[_Bucket]:
    """Split tensor indices by (device, dtype of each role), skipping empty tensors."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(roles[0]):
        if p.numel() == 0:
            continue
        key = (p.device,) + tuple(None if r[i] is None else r[i].dtype for r in roles)
        groups.setdefault(key, []).append(i)
    return [_Bucket(idx, roles) for idx in groups.values()]


def _index_table(bucket: _Bucket, chunk: int, device) -> tuple[Tensor, int]:
    rows = bucket.roles
    ptrs = [[0 if t is None else t.data_ptr() for t in row] for row in rows]
    numels = [t.numel() for t in rows[0]]
    key = (device, chunk, tuple(map(tuple, ptrs)), tuple(numels))
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit
    ent_t, ent_s = [], []
    for ti, n in enumerate(numels):
        for start in range(0, n, chunk):
            ent_t.append(ti)
            ent_s.append(start)
    flat = [x for row in ptrs for x in row] + numels + ent_t + ent_s
    table = torch.tensor(flat, dtype=torch.int64)
    if device.type != "cpu":
        table = table.pin_memory().to(device, non_blocking=True)
    _TABLE_CACHE[key] = (table, len(ent_t))
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return table, len(ent_t)


def _on_device(v, device) -> bool:
    return isinstance(v, Tensor) and v.device.type != "cpu" and device.type != "cpu"


def scalar_table(group_scalars: Sequence, columns: Sequence, indices: list[int], device) -> Tensor:
    """fp64 table: group scalars, then for each tensor of the bucket one value per column.

    A value is a Python number or a one-element Tensor; a column is a list (one value
    per tensor of the group) or a 1-D Tensor. Values on the device are gathered on
    the device (no host sync, CUDA-graph capturable)."""
    host = all(not _on_device(v, device) for v in group_scalars) and all(
        (not _on_device(c, device)) if isinstance(c, Tensor)
        else all(not _on_device(c[i], device) for i in indices)
        for c in columns
    )
    if host:
        vals = [float(v) for v in group_scalars]
        cols = [c[indices].tolist() if isinstance(c, Tensor) else [float(c[i]) for i in indices]
                for c in columns]
        vals += [cols[k][j] for j in range(len(indices)) for k in range(len(cols))]
        table = torch.tensor(vals or [0.0], dtype=torch.float64)
        if device.type != "cpu":
            table = table.pin_memory().to(device, non_blocking=True)
        return table

    def dev(v):
        if isinstance(v, Tensor):
            return v.detach().reshape(()).to(device=device, dtype=torch.float64)
        return torch.full((), float(v), dtype=torch.float64, device=device)

    parts = [torch.stack([dev(v) for v in group_scalars])] if group_scalars else []
    if columns:
        cols = []
        for c in columns:
            if isinstance(c, Tensor):
                idx = torch.tensor(indices, device=c.device) if len(indices) != c.numel() else None
                c = c if idx is None else c[idx]
                cols.append(c.to(device=device, dtype=torch.float64))
            else:
                cols.append(torch.stack([dev(c[i]) for i in indices]))
        parts.append(torch.stack(cols, dim=1).reshape(-1))
    return torch.cat(parts) if parts else torch.zeros(1, dtype=torch.float64, device=device)


def launch(
    kernel,
    roles: Sequence[Sequence[Tensor | None]],
    written: Sequence[int],
    group_scalars: Sequence = (),
    columns: Sequence = (),
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    **constexprs,
) -> None:
    """Run ``kernel`` over every tensor of ``roles`` (role 0 = params) in as few launches
    as there are (device, dtype signature) buckets. Every bucket is compiled before any
    is launched: a compile failure raises :class:`KernelCompileError` with nothing
    updated."""
    block, iters = chunk_config()
    n = len(roles[0])
    roles = [r if r is not None else [None] * n for r in roles]
    _compile_and_run(
        kernel, buckets(roles), len(roles), block * iters, written, group_scalars, columns,
        grad_scale, found_inf, dict(BLOCK=block, ITERS=iters, **constexprs),
    )


class _Raw:
    """A bucket used as it is: the caller guarantees the layouts the kernel assumes."""

    def __init__(self, indices: list[int], roles: Sequence[Sequence[Tensor | None]]):
        self.indices = indices
        self.roles = [[r[i] for i in indices] for r in roles]

    def finish(self, written) -> None:
        pass


def launch_raw(
    kernel,
    roles: Sequence[Sequence[Tensor | None]],
    chunk: int,
    group_scalars: Sequence = (),
    columns: Sequence = (),
    **constexprs,
) -> None:
    """Like :func:`launch`, for kernels whose roles have different shapes (reductions,
    row gathers): one program per ``chunk`` elements of role 0, no staging (every tensor
    is used in place, as the caller laid it out), no AMP arguments, and ``BLOCK``/``ITERS``
    only if the caller passes them. Tensors whose role-0 tensor is empty get no entry."""
    n = len(roles[0])
    roles = [r if r is not None else [None] * n for r in roles]
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(roles[0]):
        if t.numel() == 0:
            continue
        key = (t.device,) + tuple(None if r[i] is None else r[i].dtype for r in roles)
        groups.setdefault(key, []).append(i)
    _compile_and_run(kernel, [_Raw(idx, roles) for idx in groups.values()], len(roles), chunk,
                     (), group_scalars, columns, None, None, constexprs)


def _compile_and_run(kernel, bucket_list, n_roles, chunk, written, group_scalars, columns,
                     grad_scale, found_inf, constexprs) -> None:
    plans = []
    for b in bucket_list:
        device = b.roles[0][0].device
        itab, n_entries = _index_table(b, chunk, device)
        stab = scalar_table(group_scalars, columns, b.indices, device)
        refs = [row[0] if row[0] is not None else b.roles[0][0] for row in b.roles]
        gs = grad_scale.to(device) if grad_scale is not None else stab
        fi = found_inf.to(device=device, dtype=torch.float32) if found_inf is not None else stab
        args = (itab, stab, gs, fi, len(b.indices), n_entries, *refs)
        kwargs = dict(
            N_ROLES=n_roles, N_GROUP=len(group_scalars), N_PER=max(len(columns), 1),
            ACC64=b.roles[0][0].dtype == torch.float64,
            HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
            **constexprs,
        )
        plans.append((b, args, kwargs, n_entries))
    if not interpreting():
        for b, args, kwargs, n in plans:
            refs = args[-n_roles:]
            key = (kernel, refs[0].device, tuple(r.dtype for r in refs), tuple(sorted(kwargs.items())))
            if key in _COMPILED:
                continue
            try:
                kernel.warmup(*args, grid=(n,), num_warps=NUM_WARPS, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure
                raise KernelCompileError(f"{getattr(kernel, '__name__', kernel)}: {type(e).__name__}: {e}") from e
            _COMPILED.add(key)
    for b, args, kwargs, n in plans:
        kernel[(n,)](*args, num_warps=NUM_WARPS, **kwargs)
        b.finish(written)
