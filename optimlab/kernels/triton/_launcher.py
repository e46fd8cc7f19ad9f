"""Host side of the Triton backend: multi-tensor launches over (tensor, chunk) tables.

One launch updates every tensor of a param group that shares a device and a dtype
signature (the dtype of each role: param, grad, state...). The kernel receives

* ``itab`` (int64): ``[roles x n]`` base addresses, ``[n]`` numels, ``[E]`` tensor
  index and ``[E]`` first element of each entry (a chunk of ``BLOCK * ITERS``
  elements). Cached on the device, keyed by the addresses, so a steady-state step
  copies no table. A miss (a grad at a new address) rebuilds only the address rows:
  the entry rows, which depend on the numels alone, are cached on the host;
* ``stab`` (fp64): group scalars, then ``[n x K]`` per-tensor scalars. Built on the
  host from Python numbers (one small copy) or, when a scalar is a device tensor
  (capturable, Tensor lr on the device, fused step counters) or a CUDA graph is being
  captured, with device operations only (no host->device copy, no host sync);
* one *reference* pointer per role (the bucket's first tensor of that role), whose
  element type the kernel casts the table's addresses to.

Each bucket is prepared, compiled and launched under ``torch.cuda.device(its device)``,
so Triton launches on the params' device and on that device's current stream (a param
group may span several GPUs, one launch per device). Every launch passes the same
compile options (:data:`LAUNCH_OPTIONS`: no floating-point contraction beyond the
kernels' explicit ``tl.fma``).

Offsets are int64 throughout, so tensors beyond 2**31 elements are addressed
correctly. Params that are not dense (or whose grad/state have other strides) are
staged through contiguous copies and written back after the launch.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections import OrderedDict
from itertools import chain, repeat
from typing import Sequence

import torch
from torch import Tensor

from . import KernelCompileError, interpreting
from . import _helpers as _h
from ._host import capturing

#: elements per block and blocks per program (a chunk is BLOCK * ITERS elements)
BLOCK = 1024
ITERS = 4
INTERPRET_BLOCK = 128  # interpreted kernels: smaller blocks are faster in numpy
INTERPRET_ITERS = 1
NUM_WARPS = 4
#: compile options passed to every launch and warm-up. ``enable_fp_fusion=False``: the
#: compiler contracts no ``a * b + c`` into an fma (Triton's default does, unless
#: TRITON_DEFAULT_FP_FUSION=0), so results do not depend on Triton's default or the
#: environment: fused multiply-adds are exactly the kernels' explicit ``tl.fma`` calls,
#: as in the interpreter and the cpp backend (built with -ffp-contract=off).
LAUNCH_OPTIONS = {"num_warps": NUM_WARPS, "enable_fp_fusion": False}

_TABLE_CACHE: "OrderedDict[tuple, _Table]" = OrderedDict()
_TABLE_CACHE_SIZE = 64
#: tables a CUDA graph captured: its replays read them, so they are never evicted
_CAPTURED_TABLES: dict[tuple, "_Table"] = {}
#: host int64 tail of a table (numels, entry tensor indices, entry starts) per
#: (chunk, numels): a table miss (new addresses, same shapes) reuses it
_ENTRY_CACHE: "OrderedDict[tuple, tuple[Tensor, int]]" = OrderedDict()
_ENTRY_CACHE_SIZE = 64
_COMPILED: set[tuple] = set()

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_DEVICE = operator.attrgetter("device")
_DTYPE = operator.attrgetter("dtype")


def chunk_config() -> tuple[int, int]:
    if interpreting():
        return INTERPRET_BLOCK, INTERPRET_ITERS
    return BLOCK, ITERS


def _device_guard(device: torch.device):
    """Make ``device`` current (for Triton, which launches on the current device and its
    current stream); nothing for CPU tensors (interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _current_stream(device: torch.device):
    """The stream a launch on ``device`` runs on (None for CPU tensors)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device)
    return None


def _to_device(host: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device``: pinned and copied without blocking (never called
    while a CUDA graph is being captured)."""
    if device.type == "cpu":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def _all_none(row) -> bool:
    return not any(map(operator.is_not, row, repeat(None)))


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

    def __init__(self, indices: list[int], roles: Sequence[Sequence[Tensor | None]], full: bool = False):
        self.indices = indices
        self.roles: list[Sequence[Tensor | None]] = []
        self._staged: list[list[tuple[Tensor, Tensor]]] = [[] for _ in roles]
        params = roles[0] if full else [roles[0][i] for i in indices]
        # the usual case, checked with C-level passes: contiguous params, and roles with
        # the params' strides (or absent) are used as they are
        contiguous = all(map(Tensor.is_contiguous, params))
        strides = list(map(Tensor.stride, params)) if contiguous else None
        for k, r in enumerate(roles):
            row = r if full else [r[i] for i in indices]
            if contiguous and (k == 0 or _same_strides(row, strides)):
                self.roles.append(row)
                continue
            self.roles.append([self._stage(k, p, t) for p, t in zip(params, row)])

    def _stage(self, k: int, p: Tensor, t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        p_dense = _dense(p)
        if p_dense and t.stride() == p.stride():
            return t
        if p_dense:
            s = torch.empty_like(p, dtype=t.dtype, memory_format=torch.preserve_format)
        else:
            s = torch.empty(p.shape, dtype=t.dtype, device=t.device)
        s.copy_(t)
        self._staged[k].append((t, s))
        return s

    def finish(self, written: Sequence[int]) -> None:
        for k in written:
            for orig, staged in self._staged[k]:
                orig.copy_(staged)


def _same_strides(row, strides) -> bool:
    """Every tensor of ``row`` has the given strides (or the row is all None)."""
    if row[0] is None:
        return _all_none(row)
    try:
        return list(map(Tensor.stride, row)) == strides
    except TypeError:  # a None among tensors
        return False


def _one_dtype(row) -> bool:
    """One dtype for the whole row (or the row is all None)."""
    if row[0] is None:
        return _all_none(row)
    try:
        return len(set(map(_DTYPE, row))) == 1
    except AttributeError:  # a None among tensors
        return False


def _group_indices(roles: Sequence[Sequence[Tensor | None]]) -> tuple[list[list[int]], bool]:
    """Indices of role 0's tensors split by (device, dtype of each role), skipping empty
    tensors, and whether there is a single group holding every index."""
    params = roles[0]
    if (len(set(map(_DEVICE, params))) == 1 and 0 not in map(Tensor.numel, params)
            and all(map(_one_dtype, roles))):
        return [list(range(len(params)))], True  # the usual case, in C-level passes
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        if p.numel() == 0:
            continue
        key = (p.device,) + tuple(None if r[i] is None else r[i].dtype for r in roles)
        groups.setdefault(key, []).append(i)
    return list(groups.values()), False


def buckets(roles: Sequence[Sequence[Tensor | None]]) -> list[_Bucket]:
    """Split tensor indices by (device, dtype of each role), skipping empty tensors."""
    groups, full = _group_indices(roles)
    return [_Bucket(idx, roles, full) for idx in groups]


class _Table:
    """A launch table on its device, its entry count, and the streams it is used on
    (recorded with the caching allocator, so an evicted table is not reused while a
    launch on another stream may still read it)."""

    __slots__ = ("tensor", "n_entries", "streams", "aligned")

    def __init__(self, tensor: Tensor, n_entries: int, stream, aligned: bool = False) -> None:
        self.tensor = tensor
        self.n_entries = n_entries
        self.streams = {stream}
        self.aligned = aligned


def aligned(ptrs: Sequence[int], numels: Sequence[int], chunk: int) -> bool:
    """What a kernel's ``ALIGNED`` flag promises (``_helpers.entry``/``tensor_ptr``): every
    address a multiple of 16 bytes, every numel and chunk a multiple of 8 elements, so that
    the compiler may use 128-bit loads and stores. Tensors from the caching allocator are
    aligned; a view at an odd storage offset or an odd numel makes the launch scalar."""
    align_b, align_n = _h.ALIGN_BYTES.value, _h.ALIGN_ELEMS.value
    return (chunk % align_n == 0 and not any(p % align_b for p in ptrs)
            and not any(n % align_n for n in numels))


def _addresses(row) -> list[int]:
    if row[0] is None and _all_none(row):
        return [0] * len(row)
    try:
        return list(map(Tensor.data_ptr, row))
    except TypeError:  # a None among tensors
        return [0 if t is None else t.data_ptr() for t in row]


def _entries(chunk: int, numels: tuple) -> tuple[Tensor, int]:
    """Host int64 ``[numels | entry tensor indices | entry first elements]`` and the
    number of entries (one per ``chunk`` elements of each tensor), built with tensor
    operations (no Python loop over chunks) and cached per ``(chunk, numels)``."""
    key = (chunk, numels)
    hit = _ENTRY_CACHE.get(key)
    if hit is not None:
        _ENTRY_CACHE.move_to_end(key)
        return hit
    nt = torch.tensor(numels, dtype=torch.int64)
    counts = (nt + (chunk - 1)) // chunk
    n_entries = int(counts.sum())
    ent_t = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int64), counts)
    first = torch.cumsum(counts, 0) - counts  # the first entry of each tensor
    ent_s = (torch.arange(n_entries, dtype=torch.int64) - first[ent_t]) * chunk
    hit = (torch.cat([nt, ent_t, ent_s]), n_entries)
    _ENTRY_CACHE[key] = hit
    if len(_ENTRY_CACHE) > _ENTRY_CACHE_SIZE:
        _ENTRY_CACHE.popitem(last=False)
    return hit


class CaptureError(RuntimeError):
    """A step cannot be captured in a CUDA graph as it stands (raised before any launch)."""


def _table(bucket: _Bucket, chunk: int, device, is_capturing: bool = False, what: str = "") -> tuple[tuple, _Table]:
    ptrs = list(chain.from_iterable(map(_addresses, bucket.roles)))
    numels = tuple(map(Tensor.numel, bucket.roles[0]))
    key = (device, chunk, tuple(ptrs), numels)
    hit = _CAPTURED_TABLES.get(key)
    if hit is not None:
        return key, hit
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return key, hit
    if is_capturing:
        raise CaptureError(
            f"optimlab (triton backend{', ' + what if what else ''}): a CUDA graph is being "
            "captured, but this step's launch table (the addresses of its params, grads and "
            "state) was not built before capture, and building it needs a host-to-device "
            "copy, which capture cannot record safely. Run one step outside capture with "
            "the same tensors first, and keep the grads where they are (for example "
            "zero_grad(set_to_none=False) before the warm-up step and the capture, so that "
            "backward writes the grads in place). Nothing was updated.")
    tail, n_entries = _entries(chunk, numels)
    host = torch.cat([torch.tensor(ptrs, dtype=torch.int64), tail]) if ptrs else tail
    entry = _Table(_to_device(host, device), n_entries, _current_stream(device),
                   aligned(ptrs, numels, chunk))
    _TABLE_CACHE[key] = entry
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return key, entry


def _index_table(bucket: _Bucket, chunk: int, device, is_capturing: bool = False) -> tuple[Tensor, int]:
    """The bucket's launch table on ``device`` (cached) and its number of entries."""
    _, entry = _table(bucket, chunk, device, is_capturing)
    return entry.tensor, entry.n_entries


def _on_device(v, device) -> bool:
    return isinstance(v, Tensor) and v.device.type != "cpu" and device.type != "cpu"


_HOST_TYPES = frozenset({float, int, bool})


def _host_values(values, device) -> bool:
    """True when every value is a Python number or a host tensor (for ``device``)."""
    types = set(map(type, values))
    if types <= _HOST_TYPES:
        return True
    return all(not _on_device(v, device) for v in values)


def _same(a: float, b: float) -> bool:
    """Same float bits, as far as a fill cares (-0.0 and 0.0 differ; NaN equals NaN)."""
    if a != a or b != b:
        return a != a and b != b
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _filled(values: list[float], device) -> Tensor:
    """fp64 tensor of Python ``values`` on ``device`` built with fills, one per run of
    equal values: no host-to-device copy (safe while a CUDA graph is captured)."""
    out = torch.empty(len(values), dtype=torch.float64, device=device)
    i, n = 0, len(values)
    while i < n:
        j = i + 1
        while j < n and _same(values[j], values[i]):
            j += 1
        out[i:j].fill_(values[i])
        i = j
    return out


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """``indices`` (ascending) as runs ``[a, b)`` of consecutive integers."""
    runs = []
    a = prev = indices[0]
    for i in indices[1:]:
        if i != prev + 1:
            runs.append((a, prev + 1))
            a = i
        prev = i
    runs.append((a, prev + 1))
    return runs


def _take(c: Tensor, indices: list[int], full: bool) -> Tensor:
    """``c[indices]`` with slices (views) and one cat: no index tensor to copy to the device."""
    if full:
        return c
    parts = [c[a:b] for a, b in _runs(indices)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def scalar_table(group_scalars: Sequence, columns: Sequence, indices: list[int], device,
                 is_capturing: bool = False, full: bool | None = None) -> Tensor:
    """fp64 table: group scalars, then for each tensor of the bucket one value per column.

    A value is a Python number or a one-element Tensor; a column is a list (one value
    per tensor of the group) or a 1-D Tensor; ``full``: ``indices`` are every tensor of
    the group. With every value on the host (and no graph being captured) the table is
    built on the host and copied once; otherwise it is built with device operations
    only: device values are gathered where they are (no host sync), Python values are
    filled in (no host-to-device copy), so a capturing step records no copy."""
    if full is None:
        n = len(columns[0]) if columns else len(indices)
        full = len(indices) == n
    host = not is_capturing and _host_values(group_scalars, device) and all(
        (not _on_device(c, device)) if isinstance(c, Tensor) else _host_values(c, device)
        for c in columns
    )
    if host:
        vals = [float(v) for v in group_scalars]
        if columns:
            cols = []
            for c in columns:
                if isinstance(c, Tensor):
                    cols.append((c if full else c[indices]).tolist())
                else:
                    cols.append(list(map(float, c)) if full else [float(c[i]) for i in indices])
            vals.extend(chain.from_iterable(zip(*cols)))
        return _to_device(torch.tensor(vals or [0.0], dtype=torch.float64), device)

    def dev(v):
        if isinstance(v, Tensor):
            v = v.detach().reshape(())
            if not v.is_cpu or device.type == "cpu":  # gathered where it is: no host sync
                return v.to(device=device, dtype=torch.float64)
            v = float(v)  # a host tensor: read on the host, filled in below
        return v

    def stacked(values) -> Tensor:
        values = [dev(v) for v in values]
        if not any(isinstance(v, Tensor) for v in values):
            return _filled([float(v) for v in values], device)
        return torch.stack([v if isinstance(v, Tensor) else
                            torch.full((), float(v), dtype=torch.float64, device=device)
                            for v in values])

    parts = [stacked(group_scalars)] if group_scalars else []
    if columns:
        cols = []
        for c in columns:
            if isinstance(c, Tensor):
                c = _take(c, indices, full)
                if c.is_cpu and device.type != "cpu":
                    cols.append(_filled(c.tolist(), device))
                else:
                    cols.append(c.to(device=device, dtype=torch.float64))
            else:
                cols.append(stacked(c if full else [c[i] for i in indices]))
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
    as there are (device, dtype signature) buckets. Every bucket is prepared and compiled
    before any is launched: a compile failure raises :class:`KernelCompileError`, a step
    that cannot be captured :class:`CaptureError`, with nothing updated."""
    block, iters = chunk_config()
    n = len(roles[0])
    roles = [r if r is not None else [None] * n for r in roles]
    _compile_and_run(
        kernel, buckets(roles), n, len(roles), block * iters, written, group_scalars, columns,
        grad_scale, found_inf, dict(BLOCK=block, ITERS=iters, **constexprs), align=True,
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
    groups, _ = _group_indices(roles)
    _compile_and_run(kernel, [_Raw(idx, roles) for idx in groups], n, len(roles), chunk,
                     (), group_scalars, columns, None, None, constexprs)


def _spec(v):
    """What Triton may specialize a launch argument on (a superset: its integer width and
    value 1, divisibility by 16 of integers and addresses, the element type), so that a
    new specialization is compiled by the warm-up pass, inside the compile-error fallback,
    and not by a launch after other buckets were updated."""
    if isinstance(v, Tensor):
        return (v.dtype, v.data_ptr() % 16 == 0)
    if isinstance(v, bool) or not isinstance(v, int):
        return (type(v),)
    return (v == 1, v % 16 == 0, -2**31 <= v < 2**31, v < 2**63)


def _compile_and_run(kernel, bucket_list, n_all, n_roles, chunk, written, group_scalars, columns,
                     grad_scale, found_inf, constexprs, align: bool = False) -> None:
    """Prepare, compile and launch each bucket; ``align``: pass the kernel ``ALIGNED``
    (whether the bucket's table meets :func:`aligned`)."""
    name = getattr(kernel, "__name__", str(kernel))
    plans = []
    for b in bucket_list:
        device = b.roles[0][0].device
        with _device_guard(device):
            is_capturing = capturing()  # the device's current stream
            key, table = _table(b, chunk, device, is_capturing, name)
            stab = scalar_table(group_scalars, columns, b.indices, device, is_capturing,
                                full=len(b.indices) == n_all)
            gs = grad_scale.to(device) if grad_scale is not None else stab
            fi = found_inf.to(device=device, dtype=torch.float32) if found_inf is not None else stab
        refs = [row[0] if row[0] is not None else b.roles[0][0] for row in b.roles]
        args = (table.tensor, stab, gs, fi, len(b.indices), table.n_entries, *refs)
        kwargs = dict(
            N_ROLES=n_roles, N_GROUP=len(group_scalars), N_PER=max(len(columns), 1),
            ACC64=b.roles[0][0].dtype == torch.float64,
            HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
            **constexprs,
        )
        if align:
            kwargs["ALIGNED"] = table.aligned
        plans.append((b, device, key, table, args, kwargs, is_capturing))
    if not interpreting():
        for b, device, _, table, args, kwargs, is_capturing in plans:
            ckey = (kernel, device, tuple(map(_spec, args)), tuple(sorted(kwargs.items())))
            if ckey in _COMPILED:
                continue
            if is_capturing:
                raise CaptureError(
                    f"optimlab (triton backend, {name}): a CUDA graph is being captured, but "
                    "this kernel variant was not compiled before capture (compiling and "
                    "loading a kernel cannot be captured). Run one step outside capture with "
                    "the same tensors first. Nothing was updated.")
            try:
                with _device_guard(device):
                    kernel.warmup(*args, grid=(table.n_entries,), **LAUNCH_OPTIONS, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure
                raise KernelCompileError(f"{name}: {type(e).__name__}: {e}") from e
            _COMPILED.add(ckey)
    for b, device, key, table, args, kwargs, is_capturing in plans:
        with _device_guard(device):
            if is_capturing:
                if key not in _CAPTURED_TABLES:  # the graph's replays read it: never freed
                    _CAPTURED_TABLES[key] = table
                    _TABLE_CACHE.pop(key, None)
            else:
                stream = _current_stream(device)
                if stream is not None and stream not in table.streams:
                    table.tensor.record_stream(stream)
                    table.streams.add(stream)
            kernel[(table.n_entries,)](*args, **LAUNCH_OPTIONS, **kwargs)
        b.finish(written)
