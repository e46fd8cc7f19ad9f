"""optimlab's Triton backend: fused multi-tensor kernels for every optimizer.

Importing this package registers the ``"triton"`` backend of each algorithm with
:mod:`optimlab._dispatch` and its availability check. It does **not** import
``triton``: the kernel modules are imported on the first step that runs them, so
``import optimlab`` stays cheap and works where Triton is not installed.

Selection (see ``optimlab._dispatch``): ``fused=True`` on CUDA, the default on CUDA,
or ``OPTIMLAB_BACKEND=triton`` (any device; CPU tensors need ``TRITON_INTERPRET=1``,
set before Triton is imported). See docs/triton-backend.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import operator
import os

import torch

from ... import _dispatch
from ..._common import amp_on_host
from ..._compat import assume_constant_result, tracing

__all__ = [
    "KernelCompileError",
    "available",
    "check_group",
    "interpreting",
]


class KernelCompileError(RuntimeError):
    """A Triton kernel failed to compile (raised before anything was updated)."""


@assume_constant_result  # a process-wide fact (set before Triton is imported): no guard, no env read traced
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_availability: list[str | None] = []


def available() -> str | None:
    """None when Triton can be imported here, else why not (cached after the first call)."""
    if not _availability:
        if importlib.util.find_spec("triton") is None:
            why = "Triton is not installed (pip install 'optimlab[triton]')"
        else:
            try:
                import triton  # noqa: F401
                import triton.language  # noqa: F401

                why = None
            except Exception as e:  # noqa: BLE001 - a broken install is "unavailable"
                why = f"Triton cannot be imported ({type(e).__name__}: {e})"
        _availability.append(why)
    return _availability[0]


# ---- input checks ----------------------------------------------------------------------
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COMPLEX = (torch.complex64, torch.complex128)  # updated through real views


def check_group(algorithm: str, group: dict, params, grads, sparse_ok: bool = False) -> None:
    """Raise a clear error, naming the parameter, for inputs a Triton kernel cannot take.

    Registered with the dispatcher as the triton backend's plan-time check, so it runs
    before any param group is updated. Runs on every step: the common case (nothing
    wrong) is a few C-level passes over the tensors; a parameter's name (which
    ``_dispatch.param_name`` finds by scanning the group) and the message are built only
    when raising. A group may span several CUDA devices (one launch per device)."""
    if not params:
        return
    device_type = "cpu" if interpreting() else "cuda"
    on_type = _IS_CPU if device_type == "cpu" else _IS_CUDA
    if not torch.compiler.is_compiling() and (  # (what dynamo traces: the loop below)
        all(map(on_type, params))
        and all(map(on_type, grads))
        and (device_type == "cpu"  # one CPU device; CUDA: each grad on its param's GPU
             or list(map(_GET_DEVICE, grads)) == list(map(_GET_DEVICE, params)))
        and set(map(_DTYPE, params)) <= _ACCEPTED
        and not any(map(_IS_SPARSE, grads))
        and set(map(_DTYPE, grads)) <= _ACCEPTED
        and list(map(_SHAPE, grads)) == list(map(_SHAPE, params))
    ):
        return
    # something is wrong (or there are sparse grads): find the first parameter at fault
    for i, (p, g) in enumerate(zip(params, grads)):
        why = _what_is_wrong(p, g, sparse_ok, device_type)
        if why is not None:
            raise RuntimeError(
                f"optimlab {algorithm} (triton backend): {_dispatch.param_name(group, i)}{why}")


_IS_CPU = operator.attrgetter("is_cpu")
_GRAD = operator.attrgetter("grad")
_GET_DEVICE = operator.methodcaller("get_device")
_IS_CUDA = operator.attrgetter("is_cuda")
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")
_IS_SPARSE = operator.attrgetter("is_sparse")
_ACCEPTED = frozenset(_DTYPES + _COMPLEX)


def _grads(params) -> list:
    if torch.compiler.is_compiling():  # (dynamo graph-breaks on map of attrgetter)
        return [p.grad for p in params]
    return list(map(_GRAD, params))


def _what_is_wrong(p, g, sparse_ok: bool, device_type: str) -> str | None:
    """What the triton backend cannot take about param ``p`` and its grad ``g`` (the end
    of a sentence that starts with the parameter's name), or None."""
    if p.device.type == "cpu" and device_type != "cpu":
        return (" is a CPU tensor: Triton kernels run on CUDA tensors (set "
                "TRITON_INTERPRET=1 before importing triton to interpret them on the CPU)")
    if p.device.type == "cuda" and device_type != "cuda":
        return (f" is on {p.device} but TRITON_INTERPRET=1: the interpreter runs kernels on "
                "the host, which cannot address CUDA memory through the launch table (unset "
                "TRITON_INTERPRET, or move the parameters to the CPU)")
    if p.device.type not in ("cuda", "cpu"):
        return f" is on {p.device}; the triton backend supports CUDA"
    if p.dtype not in _ACCEPTED:
        return (f" has dtype {p.dtype}; the triton backend supports float16, "
                "bfloat16, float32 and float64 (complex params are updated as real views)")
    if g.is_sparse and not sparse_ok:
        return " has a sparse grad; the fused kernel needs dense grads"
    if g.device != p.device:
        return f" is on {p.device} but its grad is on {g.device}"
    if not g.is_sparse and (g.dtype not in _ACCEPTED or g.shape != p.shape):
        return (f": its grad (dtype {g.dtype}, shape {tuple(g.shape)}) does not match "
                f"the parameter (dtype {p.dtype}, shape {tuple(p.shape)})")
    return None


# ---- registration ----------------------------------------------------------------------
# Every algorithm's line of the table (``_table.ALGORITHMS``): its kernel module and update
# function, how it takes sparse grads, and its operator (``_ops``).
from ._table import ALGORITHMS  # noqa: E402  (the table imports no Triton)


def _explicit(group: dict) -> bool:
    return bool(group.get("fused")) or _dispatch.env_backend() == "triton"


def accepts(algorithm, group, params, grads, any_sparse=None) -> str | None:
    """The triton backend's ``accepts`` (``_dispatch.register_accepts``, asked when the step is
    planned): SGD's and Adagrad's sparse grads are not fused, so a group that has some runs
    the for-loop reference (as torch does); everything else the kernels take, or
    ``check_group`` refuses, naming the parameter. (A kernel that fails to compile is the
    one thing known only when it runs: ``_run`` falls back then.)"""
    if ALGORITHMS[algorithm].sparse != "forloop":
        return None
    if any_sparse is None:
        any_sparse = (any(g.is_sparse for g in grads) if torch.compiler.is_compiling()
                      else any(map(_IS_SPARSE, grads)))
    return "sparse grads" if any_sparse else None


def _fallback(algorithm, group, params, grads, state, grad_scale, found_inf, fresh=()):
    """A kernel failed to compile (``_run``): the update runs on foreach (else the for-loop),
    with AMP on the host, as ``Optimizer._apply`` runs a group planned off a fused backend.
    ``fresh``: the state entries made, uninitialised, for the kernel to fill (SGD's new
    momentum buffers): the fallback creates them as torch does, and they are filled with
    that in place (the operator's caller holds them)."""
    name = "foreach" if "foreach" in _dispatch.backends_of(algorithm) else "forloop"
    if amp_on_host(grads, grad_scale, found_inf):
        return
    held = {}
    if fresh:
        key = ALGORITHMS[algorithm].fresh
        made = list(state[key])
        held = {i: made[i] for i in fresh}
        for i in fresh:
            made[i] = None
        state = {**state, key: made}
    _dispatch.kernel(algorithm, name)(group, params, grads, state)
    for i, buf in held.items():
        buf.copy_(state[key][i])


def _run(algorithm, group, params, grads, state, grad_scale=None, found_inf=None, **extra):
    """The update's kernels, in eager code (what the operator runs): a compile failure
    falls back to foreach unless Triton was asked for explicitly."""
    fn = getattr(importlib.import_module(f"{__name__}.{ALGORITHMS[algorithm].module}"), algorithm)
    try:
        return fn(group, params, grads, state, grad_scale=grad_scale, found_inf=found_inf, **extra)
    except KernelCompileError as e:
        if _explicit(group):
            raise RuntimeError(
                f"optimlab {algorithm}: the Triton kernel failed to compile ({e}); "
                "pass fused=None (or unset OPTIMLAB_BACKEND) to fall back to foreach"
            ) from e
        _dispatch.warn_once(
            f"triton-compile:{algorithm}",
            f"optimlab {algorithm}: the Triton kernel failed to compile ({e}); "
            "falling back to the foreach backend",
        )
        return _fallback(algorithm, group, params, grads, state, grad_scale, found_inf, **extra)


def _as_real(fn, group, params, grads, state):
    """Run ``fn`` on real views of complex params/grads/state; state ``fn`` creates for a
    complex param is stored back as complex."""
    real = lambda t: torch.view_as_real(t) if torch.is_tensor(t) and torch.is_complex(t) else t  # noqa: E731
    cplx = [torch.is_complex(p) for p in params]
    views = {k: [real(t) for t in v] for k, v in state.items()}
    passed = {k: list(v) for k, v in views.items()}
    fn(group, [real(p) for p in params], [real(g) for g in grads], views)
    for k, lst in views.items():
        for i, new in enumerate(lst):
            if new is passed[k][i]:
                continue
            if cplx[i] and torch.is_tensor(new) and not torch.is_complex(new):
                new = torch.view_as_complex(new)
            state[k][i] = new


def _make_update(algorithm: str):
    entry = ALGORITHMS[algorithm]

    def update(group, params, grads, state, grad_scale=None, found_inf=None):
        # (what dynamo traces: plain comprehensions there, it graph-breaks on map of attrgetter)
        # (a group with sparse grads that are not fused never gets here: see ``accepts``)
        compiling = torch.compiler.is_compiling()
        if any(p.is_complex() for p in params) if compiling else any(map(torch.Tensor.is_complex, params)):
            # the base views complex as real unless the class opts out (SGD, Adagrad): do it here
            return _as_real(
                lambda *a: update(*a, grad_scale=grad_scale, found_inf=found_inf),
                group, params, grads, state,
            )
        extra = {}
        if entry.fresh is not None:
            from ._host import fresh_state

            fresh = fresh_state(state.get(entry.fresh), grads, found_inf)
            if fresh is None:  # a step AMP skips: nothing happens, no state is created
                return
            if fresh:
                extra["fresh"] = fresh
        if entry.operator and tracing():  # one operator call: make_fx, torch.compile see it
            from . import _ops

            _ops.call(algorithm, group, params, grads, state, grad_scale, found_inf, extra)
            return
        _run(algorithm, group, params, grads, state, grad_scale, found_inf, **extra)

    # in the compiled region (optimizer._fused_update): an operator, or nothing dynamo traces
    update.traceable = entry.operator
    update.__name__ = f"_{algorithm}_triton"
    update.__qualname__ = update.__name__
    return update


def _register() -> None:
    from . import _ops

    for algorithm in ALGORITHMS:
        _dispatch.register(algorithm, "triton")(_make_update(algorithm))
    _ops.define(_run)
    _dispatch.register_availability("triton", available)
    _dispatch.register_accepts("triton", accepts)
    _dispatch.register_check(
        "triton",
        lambda algorithm, group, params, dtypes=None: check_group(
            algorithm, group, params, _grads(params), ALGORITHMS[algorithm].sparse != "dense"),
    )


_register()
