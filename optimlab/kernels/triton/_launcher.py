"""Host side of the Triton backend: multi-tensor launches over (tensor, chunk) tables.

One launch updates every tensor of a param group that shares a device and a dtype
signature (the dtype of each role: param, grad, state...). The kernel receives

* ``itab`` (int64): ``[roles x n]`` base addresses, ``[n]`` numels, ``[E]`` tensor
  index and ``[E]`` first element of each entry (a chunk of ``BLOCK * ITERS``
  elements). Cached on the device, keyed by the addresses, so a steady-state step
  copies no table. A miss (a grad at a new address) rebuilds only the address rows:
  the entry rows, which depend on the numels alone, are cached on the host;
* a *plan* per launch site (:class:`_Plan`): what the usual bucket (every tensor, one
  device, one dtype per role, nothing staged) keeps between steps about the tensors the
  optimizer holds (params, state: the ``persistent`` roles), so that a step re-reads
  only their identities, addresses and the params' numels, and the grads' dtypes,
  strides and addresses; its table is used while every address is the same;
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

import array
import contextlib
import math
import operator
import weakref
from collections import OrderedDict
from itertools import chain, repeat
from typing import Sequence

import torch
from torch import Tensor

from . import KernelCompileError, interpreting
from . import _helpers as _h
from ._host import Same, capturing

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
#: launch plans (:class:`_Plan`) per (kernel, first param's address, number of params, chunk)
_PLANS: "OrderedDict[tuple, _Plan]" = OrderedDict()
#: (one per param group and kernel: a model with a group per layer has hundreds; a plan of
#: dead tensors holds only its table and address lists until it is evicted)
_PLAN_CACHE_SIZE = 1024
#: plans made at a site and replaced before any use, in a row, after which the site goes
#: without one for _PLAN_PAUSE steps (its tensors are new objects every step)
_PLAN_STRIKES = 2
_PLAN_PAUSE = 64

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_DEVICE = operator.attrgetter("device")
_DTYPE = operator.attrgetter("dtype")
_PTR = Tensor.data_ptr
_NUMEL = Tensor.numel
_STRIDE = Tensor.stride


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

    plan: "_Plan | None" = None
    ptrs: "list[list[int]] | None" = None  # each role's addresses, when already read
    same: bool = False  # ptrs are those of the plan's table

    def __init__(self, indices: list[int], roles: Sequence[Sequence[Tensor | None]], full: bool = False):
        self.indices = indices
        self.roles: list[Sequence[Tensor | None]] = []
        self._staged: list[list[tuple[Tensor, Tensor]]] = [[] for _ in roles]
        self.as_is = True  # every role used as it is (nothing staged)
        params = roles[0] if full else [roles[0][i] for i in indices]
        _check_shapes(params, roles, indices, full)
        # the usual case, checked with C-level passes: contiguous params, and roles with
        # the params' strides (or absent) are used as they are
        contiguous = all(map(Tensor.is_contiguous, params))
        strides = list(map(Tensor.stride, params)) if contiguous else None
        for k, r in enumerate(roles):
            row = r if full else [r[i] for i in indices]
            if contiguous and (k == 0 or _same_strides(row, strides)):
                self.roles.append(row)
                continue
            self.as_is = False
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
        if self.as_is:
            return
        for k in written:
            for orig, staged in self._staged[k]:
                orig.copy_(staged)


def _check_shapes(params, roles, indices, full: bool) -> None:
    """Every grad/state tensor has its param's shape (the kernel indexes all roles by the
    param's numel: a smaller state tensor, e.g. from another model's checkpoint, would be
    written past its end). Raises before anything is launched."""
    shapes = list(map(_SHAPE, params))
    for k, r in enumerate(roles[1:], 1):
        row = r if full else [r[i] for i in indices]
        try:
            if list(map(_SHAPE, row)) == shapes:
                continue
        except AttributeError:  # a None among tensors, or an absent role
            pass
        for p, t in zip(params, row):
            if t is not None and t.shape != p.shape:
                raise RuntimeError(
                    f"optimlab (triton backend): a tensor of role {k} (grad or state) has shape "
                    f"{tuple(t.shape)}, its parameter {tuple(p.shape)} (a state_dict of another "
                    "model loaded?); nothing was updated")


_SHAPE = operator.attrgetter("shape")


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
    return _aligned(_int64(ptrs), _numels_aligned(numels), chunk)


def _numels_aligned(numels) -> bool:
    return not any(map(_h.ALIGN_ELEMS.value.__rmod__, numels))


def _aligned(ptrs: Tensor, numels_aligned: bool, chunk: int) -> bool:
    """:func:`aligned` from the addresses as a host int64 tensor (one tensor operation)."""
    return (numels_aligned and chunk % _h.ALIGN_ELEMS.value == 0
            and not bool(torch.remainder(ptrs, _h.ALIGN_BYTES.value).any()))


def _int64(values: Sequence[int]) -> Tensor:
    """Host int64 tensor of Python ints (through an ``array``: several times cheaper
    than ``torch.tensor`` on a list)."""
    if not values:
        return torch.zeros(0, dtype=torch.int64)
    return torch.frombuffer(array.array("q", values), dtype=torch.int64)


def _addresses(row) -> list[int]:
    if row[0] is None and _all_none(row):
        return [0] * len(row)
    try:
        return list(map(_PTR, row))
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
    plan = bucket.plan
    if plan is not None:
        if bucket.same and plan.table is not None:  # every address as before
            return plan.key, plan.table
        rows = bucket.ptrs
        numels = plan.numels
    else:
        rows = bucket.ptrs if bucket.ptrs is not None else list(map(_addresses, bucket.roles))
        numels = tuple(map(_NUMEL, bucket.roles[0]))
    ptrs = tuple(chain.from_iterable(rows))
    key = (device, chunk, ptrs, numels)
    hit = _CAPTURED_TABLES.get(key)
    if hit is None:
        hit = _TABLE_CACHE.get(key)
        if hit is not None:
            _TABLE_CACHE.move_to_end(key)
    if hit is not None:
        if plan is not None:
            plan.remember(rows, key, hit)
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
    if plan is not None:  # the rows of the roles the plan holds are kept as host tensors
        row_ts = [plan.row_tensor(k, r) for k, r in enumerate(rows)]
        ptr_t = torch.cat(row_ts) if row_ts else _int64([])
        numels_aligned = plan.numels_aligned
    else:
        ptr_t = _int64(ptrs)
        numels_aligned = _numels_aligned(numels)
    host = torch.cat([ptr_t, tail]) if ptrs else tail
    entry = _Table(_to_device(host, device), n_entries, _current_stream(device),
                   _aligned(ptr_t, numels_aligned, chunk))
    _TABLE_CACHE[key] = entry
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    if plan is not None:
        plan.remember(rows, key, entry)
    return key, entry


class _Plan:
    """What one launch site's usual bucket keeps between steps: every tensor in one
    bucket (one device, one dtype per role, no empty tensor) used as it is (contiguous
    params, every role with the params' strides).

    ``persistent`` roles (the params, role 0, and the state: tensors the optimizer holds)
    are known by identity: their ids, guarded by weak references (a tensor that dies
    kills the plan, so an id in a live plan is always the same tensor), and their
    addresses; the params' numels are re-read every step (a param resized in place, or
    given a slice of itself as ``.data``, keeps its address). Other roles (grads, which
    are new tensors on most steps) are checked every step as the general path checks
    them: one dtype, the params' strides. The plan's last table is used while every
    address of every role is the same as when it was built; otherwise the table caches
    are asked (addresses are the key) and, on a miss, a table is built from the kept
    host rows of the persistent roles and the new rows of the others."""

    __slots__ = ("alive", "used", "strikes", "none", "ids", "refs", "numel_list", "numels",
                 "numels_aligned", "strides", "ptrs", "rows", "key", "table", "__weakref__")

    def __init__(self, roles, persistent, ptrs: list[list[int]], strikes: int) -> None:
        params = roles[0]
        self.alive = True
        self.used = False  # used by a step since it was made
        self.strikes = strikes  # plans made at this site before this one, in a row, never used
        self.none = tuple(r is None for r in roles)
        self.ids: dict[int, list[int]] = {}
        self.refs = []  # the weak references (kept: a reference that dies calls nothing)
        die = self._die
        for k in persistent:
            if roles[k] is not None and roles[k][0] is not None:
                self.ids[k] = list(map(id, roles[k]))
                self.refs.append(list(map(weakref.ref, roles[k], repeat(die))))
        self.numel_list = list(map(_NUMEL, params))
        self.numels = tuple(self.numel_list)
        self.numels_aligned = _numels_aligned(self.numels)
        self.strides = list(map(_STRIDE, params))
        self.ptrs = ptrs
        self.rows: dict[int, Tensor] = {}  # host int64 address rows of the persistent roles
        self.key = self.table = None

    def _die(self, _ref) -> None:
        self.alive = False

    def row_tensor(self, k: int, ptrs: list[int]) -> Tensor:
        t = self.rows.get(k)
        if t is None:
            t = _int64(ptrs)
            if k in self.ids or self.none[k]:  # addresses that hold while the plan does
                self.rows[k] = t
        return t

    def remember(self, rows, key, table) -> None:
        self.ptrs, self.key, self.table = rows, key, table

    def bucket(self, roles) -> "_Bucket | None":
        """The bucket of this step's ``roles`` if the plan holds for them (else None)."""
        if not self.alive or len(roles) != len(self.none):
            return None
        params = roles[0]
        if list(map(_NUMEL, params)) != self.numel_list:
            return None
        ptrs = []
        same = True
        for k, row in enumerate(roles):
            if row is None:
                if not self.none[k]:
                    return None
                ptrs.append(self.ptrs[k])
                continue
            if self.none[k]:
                return None
            ids = self.ids.get(k)
            if ids is not None:
                if list(map(id, row)) != ids:
                    return None
                p = list(map(_PTR, row))
                if p != self.ptrs[k]:  # a held tensor moved (``.data =``): read it all again
                    return None
            else:
                try:
                    if len(set(map(_DTYPE, row))) != 1 or list(map(_STRIDE, row)) != self.strides:
                        return None
                except (AttributeError, TypeError):  # a None among tensors
                    return None
                p = list(map(_PTR, row))
                same = same and p == self.ptrs[k]
            ptrs.append(p)
        b = _Bucket.__new__(_Bucket)  # (every role as it is: nothing to check or stage)
        b.indices = range(len(params))
        b.roles = [r if r is not None else _nones(len(params)) for r in roles]
        b._staged, b.as_is = (), True
        b.plan, b.ptrs, b.same = self, ptrs, same
        return b


def _nones(n: int) -> list[None]:
    return [None] * n


def _planned_buckets(kernel, roles, persistent, chunk) -> list[_Bucket]:
    """:func:`buckets` of ``roles`` through the launch site's :class:`_Plan` (made when
    the general path finds the usual single bucket)."""
    params = roles[0]
    n = len(params)
    # (keyed by the first param's address: real views of complex params, new objects on
    # every step, still find the plan their site had; the plan checks identities)
    pkey = (kernel, params[0].data_ptr(), n, chunk) if n else None
    plan = _PLANS.get(pkey)
    strikes = 0
    if plan is not None:
        if type(plan) is _NoPlan:
            plan.left -= 1
            if plan.left > 0:
                return buckets([r if r is not None else _nones(n) for r in roles])
        else:
            b = plan.bucket(roles)
            if b is not None:
                plan.used = True
                _PLANS.move_to_end(pkey)
                return [b]
            strikes = 0 if plan.used else plan.strikes + 1
        del _PLANS[pkey]
    bucket_list = buckets([r if r is not None else _nones(n) for r in roles])
    if n and len(bucket_list) == 1 and bucket_list[0].as_is and len(bucket_list[0].indices) == n:
        if strikes >= _PLAN_STRIKES:
            _PLANS[pkey] = _NoPlan(_PLAN_PAUSE)
        else:
            b = bucket_list[0]
            b.ptrs = list(map(_addresses, b.roles))
            b.plan = _PLANS[pkey] = _Plan(roles, persistent, b.ptrs, strikes)
        if len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return bucket_list


class _NoPlan:
    """A launch site whose plans did not hold (its persistent tensors are new objects on
    every step, e.g. the real views of complex params): the general path, and no plan
    made, for the next ``left`` steps."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


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
    per tensor of the group), a 1-D Tensor, or :class:`~._host.Same` (one value for every
    tensor); ``full``: ``indices`` are every tensor of the group. With every value on the
    host (and no graph being captured) the table is built on the host, with tensor
    operations (no Python-level pass per tensor for Same and Tensor columns), and copied
    once; otherwise it is built with device operations only: device values are gathered
    where they are (no host sync), Python values are filled in (no host-to-device copy),
    so a capturing step records no copy."""
    sized = [c for c in columns if not isinstance(c, Same)]
    if full is None:
        full = not sized or len(indices) == len(sized[0])
    host = not is_capturing and _host_values(group_scalars, device) and all(
        _host_values((c.value,), device) if isinstance(c, Same)
        else (not _on_device(c, device)) if isinstance(c, Tensor) else _host_values(c, device)
        for c in columns
    )
    nb = len(indices)
    if host:
        head = [float(v) for v in group_scalars]
        if not columns:
            return _to_device(torch.tensor(head or [0.0], dtype=torch.float64), device)
        if not sized:  # one row for every tensor
            vals = torch.tensor(head + [float(c.value) for c in columns], dtype=torch.float64)
            return _to_device(torch.cat([vals[:len(head)], vals[len(head):].repeat(nb)]), device)
        cols = []
        for c in columns:
            if isinstance(c, Same):
                cols.append(torch.full((nb,), float(c.value), dtype=torch.float64))
            elif isinstance(c, Tensor):
                cols.append((c if full else c[indices]).detach().to(device="cpu", dtype=torch.float64))
            else:
                cols.append(torch.tensor(list(map(float, c)) if full else [float(c[i]) for i in indices],
                                         dtype=torch.float64))
        table = torch.cat([torch.tensor(head, dtype=torch.float64), torch.stack(cols, dim=1).reshape(-1)])
        return _to_device(table, device)

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
            if isinstance(c, Same):
                v = dev(c.value)
                cols.append(v.reshape(1).expand(nb) if isinstance(v, Tensor) else
                            torch.full((nb,), float(v), dtype=torch.float64, device=device))
            elif isinstance(c, Tensor):
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
    written: Sequence[int] | None = None,
    group_scalars: Sequence = (),
    columns: Sequence = (),
    *,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    persistent: Sequence[int] | None = None,
    **constexprs,
) -> None:
    """Run ``kernel`` over every tensor of ``roles`` (role 0 = params) in as few launches
    as there are (device, dtype signature) buckets. Every bucket is prepared and compiled
    before any is launched: a compile failure raises :class:`KernelCompileError`, a step
    that cannot be captured :class:`CaptureError`, with nothing updated.

    ``written``: the roles the kernel writes (staged copies of them are written back);
    ``persistent``: the roles whose tensors live from step to step (role 0, the params,
    and the state the optimizer holds; never grads or temporaries): with any, the launch
    goes through the site's :class:`_Plan`. For an elementwise kernel
    (:class:`._elementwise.Kernel`) both default to its line of ``_table.ELEMENTWISE``."""
    spec = getattr(kernel, "spec", None)
    if written is None:
        written = spec.written(grad_scale is not None) if spec is not None else ()
    if persistent is None:
        persistent = spec.persistent if spec is not None else ()
    block, iters = chunk_config()
    n = len(roles[0])
    chunk = block * iters
    if persistent:
        bucket_list = _planned_buckets(kernel, roles, persistent, chunk)
    else:
        bucket_list = buckets([r if r is not None else [None] * n for r in roles])
    _compile_and_run(
        kernel, bucket_list, n, len(roles), chunk, written, group_scalars, columns,
        grad_scale, found_inf, dict(BLOCK=block, ITERS=iters, **constexprs), align=True,
    )


class _Raw:
    """A bucket used as it is: the caller guarantees the layouts the kernel assumes."""

    plan = ptrs = None
    same = False

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
