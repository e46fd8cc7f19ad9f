"""Backend resolution: the one place that decides which implementation runs a param group.

Order of precedence (first that applies wins):

1. explicit constructor flags: ``fused=True`` -> the device's fused backend
   (``triton`` on CUDA, ``cpp`` on CPU); ``foreach=True`` -> ``foreach``;
   ``foreach=False`` or ``fused=False`` -> ``forloop`` (torch's semantics);
2. the environment variable ``OPTIMLAB_BACKEND`` (forloop | foreach | triton | cpp);
3. the default rule for the device.

``differentiable=True`` always runs the for-loop reference, as in torch.
An explicit request for a backend that is not available raises; the environment
override and the default fall back to foreach/forloop with one warning.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import _measured
from ._compat import assume_constant_result

BACKENDS = ("forloop", "foreach", "triton", "cpp")
ENV_VAR = "OPTIMLAB_BACKEND"

# algorithm name -> backend name -> update function
_KERNELS: dict[str, dict[str, Callable]] = defaultdict(dict)
# backend name -> callable returning None if usable, else a reason string
_AVAILABILITY: dict[str, Callable[[], str | None]] = {}
# backend name -> check(algorithm, group, params) raising for inputs it cannot take;
# run at plan time, before any group is updated
_CHECKS: dict[str, Callable[[str, dict, list], None]] = {}
# backend name -> accepts(algorithm, group, params, grads, any_sparse) -> None, or why the
# backend cannot run this group (the plan then runs the fallback: see ``refused``)
_ACCEPTS: dict[str, Callable[..., str | None]] = {}
_warned: set[str] = set()


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs a param group, and why: what ``Optimizer.backends()`` returns.

    Attributes:
        name: the backend: ``"forloop"``, ``"foreach"``, ``"cpp"`` or ``"triton"``.
        reason: why it was chosen, e.g. ``"fused=True"``, ``"OPTIMLAB_BACKEND=cpp"``
            or ``"measured fastest on AMD EPYC, 2 threads"``.
    """

    name: str
    reason: str


def register(algorithm: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``algorithm``'s update under ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")

    def wrap(fn: Callable) -> Callable:
        _KERNELS[algorithm][backend] = fn
        return fn

    return wrap


def register_availability(backend: str, check: Callable[[], str | None]) -> None:
    """Register a check telling whether ``backend`` can run here (None) or why not."""
    _AVAILABILITY[backend] = check


def register_check(backend: str, check: Callable[..., None]) -> None:
    """Register ``check(algorithm, group, params, dtypes=None)``, raising for inputs
    ``backend`` cannot take (``dtypes``: the params' dtypes when the caller read them)."""
    _CHECKS[backend] = check


def register_accepts(backend: str, accepts: Callable[..., str | None]) -> None:
    """Register ``accepts(algorithm, group, params, grads, any_sparse)``: None when ``backend``
    runs this group, else why not (e.g. ``"sparse grads"``). Asked at plan time, after
    :func:`resolve`: a refused group is planned onto the fallback (:func:`refused`), so
    ``Optimizer.backends()`` names what runs and no update re-routes a group. ``any_sparse``:
    whether some grad is sparse, when the caller has read it (else None)."""
    _ACCEPTS[backend] = accepts


def refused(algorithm: str, choice: BackendChoice, group: dict, params: list, grads: list,
            any_sparse: bool | None = None) -> BackendChoice:
    """``choice``, or the fallback when its backend's ``accepts`` refuses the group: foreach
    for tensors on another device (where ``algorithm`` has one; warned once), else the
    for-loop reference."""
    accepts = _ACCEPTS.get(choice.name)
    why = None if accepts is None else accepts(algorithm, group, params, grads, any_sparse)
    if why is None:
        return choice
    name = "forloop"
    if why.startswith("tensors on") and "foreach" in _KERNELS[algorithm]:
        name = "foreach"
        warn_once(f"{choice.name}-device:{algorithm}", f"optimlab: the {choice.name} backend "
                  f"does not take {why}; using {name} for {algorithm}")
    return BackendChoice(name, f"{choice.reason}; the {choice.name} backend does not take {why}")


def param_name(group: dict, i: int) -> str:
    """How an error names the i-th param (with a grad) of ``group``: its name when the
    optimizer was given named parameters, else its index in the group."""
    with_grad = [k for k, q in enumerate(group["params"]) if q.grad is not None]
    k = with_grad[i] if i < len(with_grad) else i
    names = group.get("param_names")
    if names and k < len(names):
        return f"parameter {names[k]!r}"
    return f"parameter {k} of its param group"


def check(backend: str, algorithm: str, group: dict, params: list, dtypes: frozenset | None = None) -> None:
    if backend in _CHECKS:
        _CHECKS[backend](algorithm, group, params, dtypes)


def kernel(algorithm: str, backend: str) -> Callable:
    return _KERNELS[algorithm][backend]


def backends_of(algorithm: str) -> tuple[str, ...]:
    """The backends implemented for ``algorithm``, in canonical order."""
    return tuple(b for b in BACKENDS if b in _KERNELS[algorithm])


def _unavailable(algorithm: str, backend: str) -> str | None:
    if backend not in _KERNELS[algorithm]:
        return f"optimlab has no {backend} implementation of {algorithm}"
    check = _AVAILABILITY.get(backend)
    return check() if check is not None else None


# Frames a warning skips to reach the user's line: optimlab's, and torch's (the wrappers
# around ``step``: profiling hooks, dynamo's disable, GradScaler.step calling it).
_INTERNAL_DIRS = tuple(os.path.join(os.path.dirname(f), "") for f in (__file__, torch.__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the caller point at the
    first frame outside optimlab and torch's wrappers (the user's line)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_once(key: str, message: str) -> None:
    """Warn once per process and ``key``, pointing at the user's line."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=user_stacklevel())


def _device_type(params: list[torch.Tensor]) -> str:
    return params[0].device.type if params else "cpu"


# The default backend per device type: first the measured-fastest one from
# ``_defaults.json`` (written by ``python -m optimlab.bench --update-defaults``,
# keyed by algorithm, dtype and size class, with the device it was measured on; a
# measured backend that cannot run here gives way to the next fastest measured one),
# else the first available of a fixed preference list, fastest first. A preferred
# optional backend (triton, cpp) that cannot run here is skipped with one warning.
DEFAULT_PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("cpp", "foreach", "forloop"),
    # torch's own rule until this GPU is measured (the Triton kernels win or lose by GPU:
    # fused=True or OPTIMLAB_BACKEND=triton ask for them explicitly)
    "cuda": ("foreach", "forloop"),
}
#: why the preference list decided, per device type (shown by ``opt.backends()``)
_PREFERENCE_REASON = {
    "cuda": "torch's default on cuda (foreach) until this device is measured: "
            "python -m optimlab.bench --update-defaults",
}
FUSED_BACKENDS = ("triton", "cpp")  # take grad_scale/found_inf; optional parts
DEFAULTS_FILE = Path(__file__).with_name("_defaults.json")


@functools.cache
def measured_defaults() -> dict:
    """The committed table of measured-fastest backends ({} if absent)."""
    try:
        return json.loads(DEFAULTS_FILE.read_text())
    except (OSError, ValueError):
        return {}


# Under torch.compile dynamo does not trace this (it reads a file and may check whether a
# fused backend can run, building it): it calls it eagerly and uses the answer as a constant.
@assume_constant_result
def _default(algorithm: str, device_type: str, dtype: torch.dtype | None = None,
             index: int | None = None, tensors: int = 1, numel: "int | Callable[[], int]" = 1) -> BackendChoice:
    # this machine's table for the device, else the committed one (see optimlab/_measured.py)
    entry, path = _measured.user_table(device_type, index)
    source = f" (this machine's table, {path})"
    if not entry:
        entry, source = measured_defaults().get(device_type, {}), ""
        if not _measured.committed_applies(entry, device_type, index):
            entry = {}
    dname = str(dtype).removeprefix("torch.")
    measured = _measured.lookup(entry, algorithm, dname, tensors, numel)
    where = f"{entry.get('device', device_type)}{source}"
    if measured is not None and _unavailable(algorithm, measured) is None:
        return BackendChoice(measured, f"measured fastest on {where}")
    skipped = []
    if measured is not None:  # the fastest cannot run here: the next fastest measured that can
        why = _unavailable(algorithm, measured)
        if measured in _KERNELS[algorithm]:  # implemented, but cannot run here: say so once
            warn_once(f"default:{measured}", f"optimlab: {why}; falling back to the next backend")
        skipped.append(why)
        for name in _measured.ranking(entry, algorithm, dname, tensors, numel):
            if name in _KERNELS[algorithm] and _unavailable(algorithm, name) is None:
                return BackendChoice(name, f"measured fastest available on {where} ({why})")
    order = DEFAULT_PREFERENCE.get(device_type, ("foreach", "forloop"))
    for name in order:
        why = _unavailable(algorithm, name)
        if why is None:
            reason = _PREFERENCE_REASON.get(device_type, f"default on {device_type}")
            if skipped:
                reason += f" ({'; '.join(skipped)})"
            return BackendChoice(name, reason)
        if name in FUSED_BACKENDS and name in _KERNELS[algorithm] and why not in skipped:
            warn_once(f"default:{name}", f"optimlab: {why}; falling back to the next backend")
            skipped.append(why)
    return BackendChoice("forloop", f"default on {device_type}")


def env_backend() -> str | None:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not a backend; valid: {', '.join(BACKENDS)}"
        )
    return value


_NUMEL = operator.methodcaller("numel")


def _total_numel(params: list[torch.Tensor]) -> int:
    return sum(map(_NUMEL, params))


def resolve(algorithm: str, group: dict, params: list[torch.Tensor]) -> BackendChoice:
    """Resolve the backend for one param group (see module docstring for the rules)."""
    device_type = _device_type(params)
    foreach, fused = group.get("foreach"), group.get("fused")
    if group.get("differentiable", False):
        return BackendChoice("forloop", "differentiable=True runs the for-loop reference")
    if fused:
        name = "triton" if device_type == "cuda" else "cpp"
        why = _unavailable(algorithm, name)
        if why is not None:
            raise RuntimeError(
                f"fused=True asks for the {name} backend on {device_type}, "
                f"which is not available: {why}. Pass fused=None to use the default."
            )
        return BackendChoice(name, "fused=True")
    if foreach:
        if "foreach" not in _KERNELS[algorithm]:
            raise RuntimeError(f"foreach=True: optimlab has no foreach {algorithm}")
        return BackendChoice("foreach", "foreach=True")
    if foreach is False or fused is False:
        flag = "foreach" if foreach is False else "fused"
        return BackendChoice("forloop", f"{flag}=False")
    requested = env_backend()
    why = None if requested is None else _unavailable(algorithm, requested)
    if requested is not None and why is None:
        # before the default: computing it may check (build) a backend that is not used
        return BackendChoice(requested, f"{ENV_VAR}={requested}")
    # (eager: a C-level pass, only if the table's size classes disagree; dynamo traces no
    # methodcaller, and passes _default constants)
    if torch.compiler.is_compiling():
        numel = sum(p.numel() for p in params)
    else:
        numel = functools.partial(_total_numel, params)
    default = _default(algorithm, device_type, params[0].dtype if params else None,
                       params[0].device.index if params else None, len(params), numel)
    if requested is not None:
        warn_once(
            f"env:{algorithm}:{requested}",
            f"{ENV_VAR}={requested}: {why}; using {default.name} instead",
        )
        return BackendChoice(default.name, f"{ENV_VAR}={requested} unavailable ({why})")
    return default
