"""Opt-in low-precision param updates and state dtype (beyond torch.optim).

Four keyword-only constructor arguments of the elementwise optimizers (SGD, Adam,
AdamW, Adagrad, Adadelta, Adamax, ASGD, NAdam, RAdam, RMSprop, Rprop), stored as
param group keys (they can differ per group and round-trip through ``state_dict``):

* ``kahan_sum`` (False): Kahan-compensated writes of bfloat16/float16 params;
* ``stochastic_rounding`` (False): stochastically rounded writes of bfloat16 params;
* ``state_dtype`` (None): dtype of the per-element state (float32, bfloat16 or float16;
  None: the param's dtype, as torch);
* ``rounding_seed`` (None): key of the random stream of stochastic rounding.

The keys are in the param groups only when one of them was given (all four then; absent
means off), so with the options off param groups and ``state_dict()`` are torch.optim's.
All four or none: ``add_param_group`` and the plan-time check (which sees a key set by hand)
complete them, so the base class's per-step hooks test one key (``"kahan_sum" in group``).

The rule (one implementation, every backend). A param *takes the low-precision path*
when ``state_dtype`` is set, or when ``kahan_sum`` / ``stochastic_rounding`` apply to its
dtype (bfloat16/float16, resp. bfloat16). Its update is computed in float32 (float64 for a
float64 param, whose precision is never reduced): param, grad and per-element state are
read into working copies of that dtype, the chosen backend's own update runs on them
(forloop, foreach, cpp or triton: ``apply`` wraps it), and the results are written back:

* per-element state: rounded to nearest into its stored dtype (``state_dtype``, else the
  param's dtype); state an update creates lazily (SGD's momentum buffer) is stored in it too;
* the param, plain: rounded to nearest into its dtype;
* the param, Kahan (``p``, ``c = state["kahan_comp"]`` stored in the param's dtype,
  ``p_new`` the float32 result; every operation in float32, in this order, ``rn`` rounding
  to nearest-even into the param's dtype)::

      d = p_new - p;  y = c + d;  t = rn(p + y);  c' = rn(y - (t - p));  p' = t

* the param, stochastic (bfloat16; ``step = state["sr_step"]`` after its increment)::

      bits = p_new viewed as uint32
      r    = philox(state["sr_seed"], idx & 0xFFFFFFFF, idx >> 32,
                    step & 0xFFFFFFFF, step >> 32)[0] & 0xFFFF
      p'   = bfloat16 whose bits are the upper 16 of (bits + r) mod 2**32
             (NaN: rounded to nearest instead)

  ``idx`` is the element's index in ``p.reshape(-1)`` (row-major, whatever the strides);
  ``philox`` is Philox4x32-10 exactly as Triton's ``tl.philox`` (:func:`philox`). Rounding up
  happens with probability (low 16 bits of ``bits``) / 2**16: unbiased.

Per-param state added (created with the rest of the state, by ``_new_state``, or at the
first step that needs it): ``kahan_comp`` (param's dtype and shape, zeros); ``sr_seed`` (0-dim
int64 CPU tensor) and ``sr_step`` (0-dim float64 CPU tensor, +1 before each stochastic write).
``sr_seed`` = ``torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(s))``
with ``s = splitmix64(rounding_seed + (index + 1) * 0x9E3779B97F4A7C15 mod 2**64)``,
``index`` the param's position across all param groups (the ``state_dict`` numbering):
element ``index`` of the splitmix64 sequence seeded with ``rounding_seed``. ``rounding_seed``
None draws one when the option is configured: ``torch.randint(0, 2**62, ()).item()`` from
torch's default generator (so it follows ``torch.manual_seed``; drawn only when
``stochastic_rounding`` is on, so other optimizers leave torch's random stream alone).

Step counters and 0-dim scalars (``step``, ASGD's ``eta``/``mu``, NAdam's ``mu_product``) keep
their torch dtype and are updated by the backend as usual.

Choices: ``kahan_sum`` / ``stochastic_rounding`` on a float32/float64 param are ignored for
that param, with one ``UserWarning`` per optimizer (mixed-precision models keep norms and
biases in float32; an error would force per-group options). ``state_dtype`` applies to every
floating param. Errors (``ValueError``, raised before anything changes: at construction /
``add_param_group`` when knowable, else when ``step()`` plans the group): both
``kahan_sum`` and ``stochastic_rounding``; a bad value; any option with
``differentiable=True`` (the rounded write-back is not differentiable) or with
``capturable=True`` (the write-back runs host code a CUDA graph cannot capture); complex or
DTensor params; ``stochastic_rounding`` on a float16 param.

AMP: with a fused backend and ``torch.amp.GradScaler``, a step whose ``found_inf`` is set
changes nothing, ``sr_step`` included (``found_inf`` is read on the host: one sync per
group). Checkpoints: in a group with an option on, ``load_state_dict`` stores per-element
state in the group's state dtype and keeps the checkpoint's dtype and value of the other
entries (torch's load would cast ``sr_seed``, ``sr_step``, ``eta``... to the param's dtype); a
checkpoint without the four keys (torch.optim's) keeps the optimizer's constructor values.
Under ``torch.compile`` the low-precision write runs eagerly (a graph break).

Fused write-backs (the param writes above as one pass over memory, bit for bit the torch
code here, which stays the reference and writes whatever they do not take): the C++
extension's ``lp_write`` (csrc/low_precision.cpp) for CPU params when the extension is
already loaded (never built for this), Triton's (``optimlab.kernels.triton.low_precision``)
for CUDA params when Triton can be imported. Exception: a float16 Kahan write of a NaN on
the CPU is NaN where the torch code's is, not always with its payload bits (torch's own
differ between its vectorized and scalar loops).
"""

from __future__ import annotations

import functools
import itertools
import numbers
import warnings
from typing import Any

import torch
from torch import Tensor

from ._compat import disable_dynamo, tracing

__all__ = ["KEYS", "LowPrecisionMixin", "apply", "kahan_write", "options", "philox",
           "splitmix64", "sr_seed", "stochastic_round"]

#: the group keys, with their "off" values
KEYS: dict[str, Any] = {"kahan_sum": False, "stochastic_rounding": False, "state_dtype": None,
                        "rounding_seed": None}
STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: state entries that are never per-element, even for a 0-dim param
SCALAR_KEYS = frozenset({"step", "eta", "mu", "mu_product", "sr_seed", "sr_step"})
#: bound on the float32 working copies of one update call (a bigger param is split into flat
#: slices). The stochastic write's Philox keeps ~100 bytes of int64 temporaries per element of
#: a chunk on top (about +330 MiB peak for AdamW with 64M bf16 params on an H200); smaller
#: chunks measured slower there (4x at 1/6 the size: ~300 kernel launches per chunk).
CHUNK_BYTES = 64 << 20

_M32, _M64 = 0xFFFFFFFF, (1 << 64) - 1
_KAHAN, _SR = 1, 2


def active(group: dict) -> bool:
    """Whether ``group`` has an option on."""
    return bool(group.get("kahan_sum") or group.get("stochastic_rounding") or group.get("state_dtype"))


# ---- options ------------------------------------------------------------------------
def _validate(opts: dict, differentiable, capturable) -> None:
    for key in ("kahan_sum", "stochastic_rounding"):
        if not isinstance(opts[key], bool):
            raise ValueError(f"{key} must be a bool, got {opts[key]!r}")
    if opts["kahan_sum"] and opts["stochastic_rounding"]:
        raise ValueError("kahan_sum and stochastic_rounding cannot both be True: choose one "
                         "way to write the params")
    if opts["state_dtype"] is not None and opts["state_dtype"] not in STATE_DTYPES:
        raise ValueError("state_dtype must be None, torch.float32, torch.bfloat16 or "
                         f"torch.float16, got {opts['state_dtype']!r}")
    seed = opts["rounding_seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < 2**64):
        raise ValueError(f"rounding_seed must be None or an int in [0, 2**64), got {seed!r}")
    if not (opts["kahan_sum"] or opts["stochastic_rounding"] or opts["state_dtype"] is not None):
        return
    if differentiable:
        raise ValueError("kahan_sum, stochastic_rounding and state_dtype cannot be combined with "
                         "differentiable=True: the rounded write-back of the update is not "
                         "differentiable")
    if capturable:
        raise ValueError("kahan_sum, stochastic_rounding and state_dtype cannot be combined with "
                         "capturable=True: the low-precision write runs host code (working copies "
                         "allocated per step, the stochastic rounding counters on the CPU) that a "
                         "CUDA graph cannot capture")


def _draw_seed(opts: dict) -> None:
    if opts["stochastic_rounding"] and opts["rounding_seed"] is None:
        opts["rounding_seed"] = torch.randint(0, 2**62, ()).item()  # follows torch.manual_seed
    elif opts["rounding_seed"] is not None:
        opts["rounding_seed"] = int(opts["rounding_seed"])


def options(kahan_sum: bool = False, stochastic_rounding: bool = False,
            state_dtype: torch.dtype | None = None, rounding_seed: int | None = None, *,
            differentiable: bool = False, capturable: bool = False) -> dict[str, Any]:
    """The constructor's four arguments, validated, as the keys to add to ``defaults``.

    Args:
        kahan_sum: the constructor argument.
        stochastic_rounding: the constructor argument.
        state_dtype: the constructor argument.
        rounding_seed: the constructor argument.
        differentiable: the optimizer's flag (refused with an option on).
        capturable: the optimizer's flag (refused with an option on).

    Returns:
        ``{}`` when all four are off (param groups stay torch.optim's), else all four, with
        ``rounding_seed`` drawn when ``stochastic_rounding`` is on and it is None.

    Raises:
        ValueError: a bad value or combination.
    """
    opts = dict(kahan_sum=kahan_sum, stochastic_rounding=stochastic_rounding,
                state_dtype=state_dtype, rounding_seed=rounding_seed)
    if all(v is KEYS[k] or v is None for k, v in opts.items()):
        return {}
    _validate(opts, differentiable, capturable)
    _draw_seed(opts)
    return opts


def _mode(dtype: torch.dtype, group: dict) -> int:
    if dtype in (torch.bfloat16, torch.float16):
        if group.get("kahan_sum"):
            return _KAHAN
        if group.get("stochastic_rounding"):
            return _SR  # (float16 is refused before a step)
    return 0


def _name(opt, group: dict, p: Tensor) -> str:
    k = next(k for k, q in enumerate(group["params"]) if q is p)
    names = group.get("param_names")
    if names and k < len(names):
        return f"parameter {names[k]!r}"
    g = next((i for i, x in enumerate(opt.param_groups) if x is group), len(opt.param_groups))
    return f"parameter {k} of param group {g}"


def _check_params(opt, group: dict, params) -> None:
    """Per-param errors, and the one warning per optimizer for params options ignore."""
    from .optimizer import _any_dtensor

    if any(p.is_complex() for p in params):
        p = next(p for p in params if p.is_complex())
        raise ValueError(f"kahan_sum, stochastic_rounding and state_dtype do not support complex "
                         f"params ({_name(opt, group, p)} is {p.dtype})")
    if _any_dtensor(params):
        raise ValueError("kahan_sum, stochastic_rounding and state_dtype do not support DTensor params")
    if group.get("stochastic_rounding"):
        p = next((p for p in params if p.dtype == torch.float16), None)
        if p is not None:
            raise ValueError(f"stochastic_rounding rounds float32 to bfloat16 only; "
                             f"{_name(opt, group, p)} is float16: use kahan_sum=True for float16 params")
    wide = (torch.float32, torch.float64)
    if ((group.get("kahan_sum") or group.get("stochastic_rounding"))
            and not opt.__dict__.get("_low_precision_warned") and any(p.dtype in wide for p in params)):
        opt._low_precision_warned = True
        key = "kahan_sum" if group.get("kahan_sum") else "stochastic_rounding"
        warnings.warn(f"{type(opt).__name__}: {key} only changes how bfloat16/float16 params are "
                      "written; float32/float64 params are updated as without it (warned once "
                      "per optimizer)", UserWarning, stacklevel=4)


def configure_group(opt, group: dict) -> None:
    """A group just added (``add_param_group``, also at construction): complete and check its
    low-precision keys, draw its ``rounding_seed``, check its params."""
    if not any(k in group for k in KEYS):
        return
    for k, v in KEYS.items():
        group.setdefault(k, v)
    _validate(group, group.get("differentiable"), group.get("capturable"))
    _draw_seed(group)
    _check_params(opt, group, group["params"])


def check_step(opt, group: dict, params: list[Tensor]) -> None:
    """At plan time, before anything changes, for a group with an option on: what
    ``configure_group`` checks, for a group whose options or params changed since
    (``params``: those with grads)."""
    if not active(group):
        return
    for k, v in KEYS.items():
        group.setdefault(k, v)
    _validate(group, group.get("differentiable"), group.get("capturable"))
    _draw_seed(group)
    _check_params(opt, group, params)


# ---- random bits ----------------------------------------------------------------------
def splitmix64(x: int) -> int:
    """The splitmix64 finalizer of ``x`` (mod 2**64)."""
    z = x & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sr_seed(rounding_seed: int, index: int) -> Tensor:
    """A param's ``sr_seed`` (0-dim int64 CPU tensor in [0, 2**62)): drawn from a
    ``torch.Generator`` seeded with element ``index`` of the splitmix64 sequence seeded with
    ``rounding_seed``, i.e. ``splitmix64(rounding_seed + (index + 1) * 0x9E3779B97F4A7C15)``."""
    gen = torch.Generator().manual_seed(splitmix64(rounding_seed + (index + 1) * 0x9E3779B97F4A7C15))
    return torch.randint(0, 2**62, (), generator=gen, dtype=torch.int64)


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of ``a * b`` (a: a 32-bit constant; b: uint32 values in int64).
    b is split into 16-bit halves so no int64 product overflows (each is < 2**48)."""
    lo = a * (b & 0xFFFF)
    hi = a * (b >> 16)
    s = lo + ((hi & 0xFFFF) << 16)  # < 2**49
    return (hi >> 16) + (s >> 32), s & _M32


def philox(seed: int, c0: int | Tensor, c1: int | Tensor, c2: int | Tensor, c3: int | Tensor,
           n_rounds: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Philox4x32 with ``n_rounds`` rounds, bit for bit Triton's ``tl.philox(seed, c0, c1, c2,
    c3)`` with 32-bit counters: key = (low, high) 32 bits of ``seed`` (taken as uint64).

    Args:
        seed: an int (its low 64 bits are used).
        c0: counter word 0: an int or an int64 tensor of uint32 values (taken mod 2**32);
            the four counters are broadcast together.
        c1: counter word 1, likewise.
        c2: counter word 2, likewise.
        c3: counter word 3, likewise.
        n_rounds: rounds (Triton's default: 10).

    Returns:
        The four output words, int64 tensors of the broadcast shape with values in [0, 2**32).
    """
    seed &= _M64
    k0, k1 = seed & _M32, seed >> 32
    ref = next((c for c in (c0, c1, c2, c3) if isinstance(c, Tensor)), None)
    device = ref.device if ref is not None else None
    c0, c1, c2, c3 = torch.broadcast_tensors(*(
        (torch.as_tensor(c, dtype=torch.int64, device=device) & _M32) for c in (c0, c1, c2, c3)))
    for _ in range(n_rounds):
        hi_b, lo_b = _mulhilo(0xCD9E8D57, c2)
        hi_a, lo_a = _mulhilo(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def stochastic_round(x: Tensor, seed: int, index: Tensor, step: int) -> Tensor:
    """``x`` (float32) rounded stochastically to bfloat16 (the module's rule).

    Args:
        x: float32 values (any strides).
        seed: the param's ``sr_seed``.
        index: int64 flat indices of the elements (broadcastable to ``x``).
        step: the param's ``sr_step`` (the Philox counter words 2 and 3).
    """
    bits = x.view(torch.int32).to(torch.int64) & _M32
    r = philox(seed, index & _M32, index >> 32, step & _M32, step >> 32)[0] & 0xFFFF
    top = ((bits + r) & _M32) >> 16
    out = (top - ((top & 0x8000) << 1)).to(torch.int16).view(torch.bfloat16)  # as signed 16 bits
    return torch.where(torch.isnan(x), x.to(torch.bfloat16), out)


def kahan_write(p: Tensor, comp: Tensor, new: Tensor) -> None:
    """Write float32 ``new`` into ``p`` (bfloat16/float16) with Kahan compensation ``comp``
    (same dtype), both in place: ``d = new - p; y = comp + d; t = rn(p + y);
    comp = rn(y - (t - p)); p = t``, every operation in float32."""
    p32 = p.float()
    y = comp.float() + (new - p32)
    t = (p32 + y).to(p.dtype)
    comp.copy_(y - (t.float() - p32))  # copy_ rounds to nearest-even
    p.copy_(t)


# ---- state ----------------------------------------------------------------------------
def _is_element(key, t, p: Tensor) -> bool:
    return (key not in SCALAR_KEYS and isinstance(t, Tensor) and t.is_floating_point()
            and t.shape == p.shape)


def _param_index(opt, p: Tensor) -> int:
    """``p``'s position across all param groups (the state_dict numbering), from a map kept
    while the groups keep their sizes (state is created for many params in a row)."""
    total = sum(len(g["params"]) for g in opt.param_groups)
    flat, index = opt.__dict__.get("_low_precision_index", ((), {}))
    i = index.get(id(p))
    if i is None or len(flat) != total or flat[i] is not p:
        flat = [q for g in opt.param_groups for q in g["params"]]
        index = {id(q): i for i, q in enumerate(flat)}
        opt._low_precision_index = (flat, index)
        i = index[id(p)]
    return i


def _extras(opt, group: dict, p: Tensor, have: dict) -> dict:
    """The low-precision entries ``p``'s state lacks."""
    mode, new = _mode(p.dtype, group), {}
    if mode == _KAHAN and "kahan_comp" not in have:
        new["kahan_comp"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if mode == _SR and "sr_seed" not in have:
        new["sr_seed"] = sr_seed(group["rounding_seed"], _param_index(opt, p))
        new["sr_step"] = torch.tensor(0.0, dtype=torch.float64)
    return new


def new_state(opt, group: dict, p: Tensor, p_state: dict) -> dict:
    """``_init_state``'s result for a group with an option on: per-element state in
    ``state_dtype``, plus ``kahan_comp`` / ``sr_seed`` / ``sr_step`` where they apply."""
    if not active(group):
        return p_state
    sdt = group.get("state_dtype")
    if sdt is not None:
        for k, t in p_state.items():
            if _is_element(k, t, p):
                p_state[k] = t.to(sdt)
    p_state.update(_extras(opt, group, p, p_state))
    return p_state


# ---- the step -------------------------------------------------------------------------
def wrap(opt, work, update):
    """``update`` (a backend's, same signature) run through :func:`apply` for ``work``'s
    group; ``update`` itself when the group has no option on."""
    if not active(work.group):
        return update
    return functools.partial(apply, update, opt=opt, owners=work.owners)


@disable_dynamo
def apply(update, group, params, grads, states, grad_scale=None, found_inf=None, *, opt, owners):
    """Run ``update`` (any backend's) on float32 working copies and write back (the rule above).

    Args:
        update: the backend's update, ``update(group, params, grads, states[, grad_scale=,
            found_inf=])``.
        group: the param group.
        params: its params with grads, as the base class hands them to ``update``.
        grads: their grads.
        states: ``{key: [tensor or None per param]}``; entries created or replaced here are
            set there (and in ``opt.state``).
        grad_scale: ``torch.amp.GradScaler``'s, for fused updates (passed on).
        found_inf: likewise; when set, the step changes nothing.
        opt: the optimizer (``opt.state`` holds the low-precision entries).
        owners: the params themselves, in ``params`` order.
    """
    amp = {} if grad_scale is None and found_inf is None else dict(grad_scale=grad_scale, found_inf=found_inf)
    if found_inf is not None and found_inf.item():
        return  # AMP skips this step: nothing changes (fused updates would change nothing either)
    sdt = group.get("state_dtype")
    modes = [_mode(p.dtype, group) for p in params]
    lp = [i for i, (p, m) in enumerate(zip(params, modes)) if m or (sdt is not None and p.is_floating_point())]
    if len(lp) < len(params):  # the others as without the options
        chosen = set(lp)
        _call_subset(update, group, [i for i in range(len(params)) if i not in chosen],
                     params, grads, states, amp)
    if not lp:
        return
    sr_counter = {}
    for i in lp:
        st = opt.state[owners[i]]
        missing = _extras(opt, group, owners[i], st)
        if missing:  # options turned on after this state was created
            st.update(missing)
        if modes[i] == _SR:
            st["sr_step"] += 1  # before the write (skipped above when AMP skips the step)
            sr_counter[i] = (int(st["sr_seed"]), int(st["sr_step"]))
    # per-element state (None: created lazily by the update) in its stored dtype
    elem, was_none = {}, {}
    for i in lp:
        p, target = params[i], sdt or params[i].dtype
        elem[i] = [k for k, lst in states.items() if lst[i] is None or _is_element(k, lst[i], p)]
        was_none[i] = {k for k in elem[i] if states[k][i] is None}
        for k in elem[i]:
            t = states[k][i]
            if t is not None and t.dtype != target:  # e.g. options turned on later
                states[k][i] = opt.state[owners[i]][k] = t.to(target)
    # units of work: whole params, or flat slices of big contiguous ones
    units, sizes = [], []
    for i in lp:
        p = params[i]
        # bytes per element of the working copies: param, grad, state (+1 spare)
        per_elem = (8 if p.dtype == torch.float64 else 4) * (3 + len(elem[i]))
        n, cap = p.numel(), max(1, CHUNK_BYTES // per_elem)
        comp = opt.state[owners[i]].get("kahan_comp") if modes[i] == _KAHAN else None
        dense = [p, comp] + [states[k][i] for k in elem[i]]
        if n > cap and not grads[i].is_sparse and all(t is None or t.is_contiguous() for t in dense):
            units += [(i, a, min(a + cap, n)) for a in range(0, n, cap)]
            sizes += [(min(a + cap, n) - a) * per_elem for a in range(0, n, cap)]
        else:
            units.append((i, None, None))
            sizes.append(n * per_elem)
    chunk, total, flat_grads = [], 0, {}
    for unit, size in zip(units, sizes):
        if chunk and total + size > CHUNK_BYTES:
            _run_chunk(update, group, chunk, params, grads, states, amp, opt, owners, modes,
                       elem, was_none, sr_counter, flat_grads)
            chunk, total = [], 0
        chunk.append(unit)
        total += size
    _run_chunk(update, group, chunk, params, grads, states, amp, opt, owners, modes, elem,
               was_none, sr_counter, flat_grads)


def _call_subset(update, group, idx, params, grads, states, amp) -> None:
    if len(idx) == len(params):
        update(group, params, grads, states, **amp)
        return
    sub = {k: [lst[i] for i in idx] for k, lst in states.items()}
    update(group, [params[i] for i in idx], [grads[i] for i in idx], sub, **amp)
    for k, lst in sub.items():  # state the update created lazily (the caller stores it)
        for j, i in enumerate(idx):
            states[k][i] = lst[j]


def _slice(t: Tensor, a) -> Tensor:
    return t if a is None else t.view(-1)[a[0]:a[1]]


def _run_chunk(update, group, chunk, params, grads, states, amp, opt, owners, modes, elem,
               was_none, sr_counter, flat_grads) -> None:
    # src: the stored tensors (or their flat slices) each working copy is read from
    wp, wg, ws, src = [], [], {k: [] for k in states}, []
    for i, a, b in chunk:
        p, rng = params[i], None if a is None else (a, b)
        wd = torch.float64 if p.dtype == torch.float64 else torch.float32
        views = {k: _slice(states[k][i], rng) for k in elem[i] if k not in was_none[i]}
        views[None] = _slice(p, rng)
        src.append(views)
        wp.append(views[None].to(wd))  # the param itself when already in wd: updated in place
        g = grads[i]
        if rng is not None:
            if i not in flat_grads:
                flat_grads[i] = g.reshape(-1)
            g = flat_grads[i][a:b]
        wg.append(g.to(wd))
        last = rng is None or b == p.numel()
        for k, lst in states.items():
            t = lst[i]
            if k in elem[i]:
                ws[k].append(views[k].to(wd) if k in views else None)
            else:  # scalars (step, eta, ...): the real ones once, with a param's last slice
                ws[k].append(t if last or not isinstance(t, Tensor) else t.clone())
    update(group, wp, wg, ws, **amp)
    fused = _FusedWrites.for_params([params[i] for i, _, _ in chunk])
    for j, (i, a, b) in enumerate(chunk):
        p, rng, views = params[i], None if a is None else (a, b), src[j]
        for k in elem[i]:
            w = ws[k][j]
            if k in views:
                if w is not views[k]:
                    views[k].copy_(w)  # rounds to nearest
            elif w is not None:  # created by the update: stored in the state dtype
                target = group.get("state_dtype") or p.dtype
                if rng is None:
                    states[k][i] = opt.state[owners[i]][k] = w.to(target)
                else:
                    if states[k][i] is None:
                        states[k][i] = opt.state[owners[i]][k] = torch.empty(
                            p.shape, dtype=target, device=p.device)
                    _slice(states[k][i], rng).copy_(w)
        dst, w = views[None], wp[j]
        if w is dst:
            continue
        comp = _slice(opt.state[owners[i]]["kahan_comp"], rng) if modes[i] == _KAHAN else None
        seed, step = sr_counter.get(i, (0, 0))
        if fused is not None and fused.take(dst, w, comp, modes[i], seed, step, 0 if a is None else a):
            continue
        if modes[i] == _KAHAN:
            kahan_write(dst, comp, w)
        elif modes[i] == _SR:
            if rng is None:
                index = torch.arange(p.numel(), device=p.device).view(p.shape)
            else:
                index = torch.arange(a, b, device=p.device)
            dst.copy_(stochastic_round(w, seed, index, step))
        else:
            dst.copy_(w)
    if fused is not None:
        fused.run()


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill a block of memory without gaps or overlaps (any order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


class _FusedWrites:
    """The param write-backs of one chunk as fused kernels, bit for bit the torch path above
    (which stays the reference, and takes whatever the kernels do not): the C++ extension's
    ``lp_write`` for CPU params, one call per mode, when the extension is already loaded (the
    cpp backend ran or was asked about: never a build for this); Triton's
    (``optimlab.kernels.triton.low_precision``) for CUDA params when Triton can be imported."""

    def __init__(self, cpp, triton_write) -> None:
        self.cpp, self.triton = cpp, triton_write
        self.lists = {m: ([], [], [], [], [], []) for m in (0, _KAHAN, _SR)}

    @classmethod
    def for_params(cls, params) -> _FusedWrites | None:
        if tracing():  # make_fx, dispatch modes, dynamo: torch's ops, which they record
            return None
        cpp = triton_write = None
        if any(p.device.type == "cpu" for p in params):
            from .kernels import cpp_build

            cpp = getattr(cpp_build._module, "lp_write", None)  # (None: not loaded)
        if any(p.is_cuda for p in params):
            from .kernels import triton as ot

            if ot.available() is None:
                from .kernels.triton import low_precision as triton_write
        return None if cpp is None and triton_write is None else cls(cpp, triton_write)

    def take(self, dst: Tensor, w: Tensor, comp, mode: int, seed: int, step: int, base: int) -> bool:
        """Queue (CPU) or run (CUDA) one write if a kernel takes it; False: the caller writes."""
        if dst.dtype not in (torch.bfloat16, torch.float16) or w.dtype != torch.float32 or dst.dim() == 0:
            return False  # (0-dim: torch converts a NaN to bfloat16 another way there)
        if dst.is_cuda and self.triton is not None:
            if not self.triton.supports(dst, w, comp, mode):
                return False
            self.triton.write(dst, w, comp, mode, seed, step, base)
            return True
        if dst.device.type != "cpu" or self.cpp is None or w.device != dst.device:
            return False
        if mode == _SR:  # the random bits follow the row-major index: row-major memory only
            ok = dst.is_contiguous() and w.is_contiguous()
        else:  # elementwise: any dense layout the operands share
            ok = (_dense(dst) and w.stride() == dst.stride()
                  and (comp is None or (comp.stride() == dst.stride() and comp.device == dst.device)))
        if ok:
            for lst, x in zip(self.lists[mode], (dst, w, comp, seed & _M64, step & _M64, base)):
                lst.append(x)
        return ok

    def run(self) -> None:
        for mode, (ps, ws, cs, seeds, steps, bases) in self.lists.items():
            if ps:
                self.cpp(ps, ws, cs if mode == _KAHAN else [], mode, seeds, steps, bases)


# ---- the optimizer side -----------------------------------------------------------------
def _restore(opt, state_dict: dict) -> None:
    """After torch's ``load_state_dict`` (see the module docstring)."""
    configured = {k: opt.defaults[k] for k in KEYS if k in opt.defaults}
    saved = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    for group in opt.param_groups:
        for k, v in configured.items():  # a checkpoint without the keys: the constructor's values
            group.setdefault(k, v)
    for group in opt.param_groups:
        on = active(group)
        for p in group["params"]:
            pid = next(saved, None)
            st, src = opt.state.get(p), state_dict["state"].get(pid, {})
            if not on or not st:
                continue
            for k, t in list(st.items()):
                if not isinstance(t, Tensor):
                    continue
                if _is_element(k, t, p):
                    target = p.dtype if k == "kahan_comp" else (group["state_dtype"] or p.dtype)
                    if t.dtype != target:  # from the checkpoint's value (torch's cast rounded it)
                        s = src.get(k)
                        s = s if isinstance(s, Tensor) and s.shape == t.shape else t
                        st[k] = s.to(device=t.device, dtype=target, copy=True)
                elif k != "step" and isinstance(src.get(k), Tensor):
                    sr = k in ("sr_seed", "sr_step")  # CPU tensors, whatever the param's device
                    if src[k].dtype != t.dtype or (sr and t.device.type != "cpu"):
                        st[k] = src[k].to(device="cpu" if sr else t.device, copy=True)


class LowPrecisionMixin:
    """Base of the optimizers with the low-precision options (before ``optimlab.Optimizer``):
    checks a group's options when it is added and before each step, and keeps the state's
    dtypes through ``load_state_dict``."""

    def add_param_group(self, param_group: dict) -> None:  # noqa: D102 - torch's
        super().add_param_group(param_group)
        try:
            configure_group(self, self.param_groups[-1])
        except Exception:
            self.param_groups.pop()
            raise

    add_param_group.__doc__ = torch.optim.Optimizer.add_param_group.__doc__

    def _check_group(self, group: dict, params: list[Tensor]) -> None:
        # Runs on every step: one inline check when the options are off (no super(): the
        # base's hook is a no-op; a subclass's own _check_group calls this one first).
        if "kahan_sum" in group or "stochastic_rounding" in group or "state_dtype" in group:
            check_step(self, group, params)

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102 - torch's
        super().load_state_dict(state_dict)
        _restore(self, state_dict)

    load_state_dict.__doc__ = torch.optim.Optimizer.load_state_dict.__doc__
