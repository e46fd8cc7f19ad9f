"""The shared base of every optimlab optimizer.

``optimlab.Optimizer`` is a ``torch.optim.Optimizer``: param groups, named
params, hooks, ``state_dict``/``load_state_dict`` and ``zero_grad`` are torch's
own, so checkpoints interoperate both ways. What it adds is one generic
``step``:

1. *plan*: for every group, pick the params with grads, check them and resolve
   the backend. Nothing is mutated yet, so a step that raises leaves params and
   state untouched.
2. *run*: lazily create state, gather ``{state_key: [tensor per param]}``, view
   complex tensors as real (as torch does), and call the registered update of
   the chosen backend (see ``_dispatch``): ``update(group, params, grads, state)``;
   fused backends (triton, cpp) also get ``grad_scale=`` and ``found_inf=`` from
   ``torch.amp.GradScaler`` (None otherwise).

A subclass declares its algorithm name, ``defaults``, ``_init_state`` and the
state keys its update reads; the update functions live next to it.
"""

from __future__ import annotations

import functools
import itertools
import operator
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor

from . import _dispatch
from ._compat import (
    _device_dtype_check_for_fused,
    _get_capturable_supported_devices,
    _get_fused_kernels_supported_devices,
    _get_scalar_dtype,
    _get_value,
    _to_scalar,
    assume_constant_result,
    disable_dynamo,
    graph_break,
    required,
)

__all__ = ["Optimizer", "required", "_get_scalar_dtype", "_get_value", "_to_scalar"]


def _use_grad_for_differentiable(step):
    """Run ``step`` with autograd on only for ``differentiable=True`` (torch's wrapper,
    tolerant of optimizers that have no ``differentiable`` option)."""

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults.get("differentiable", False))
            # graph breaks so that aot respects no_grad (see torch.optim.optimizer)
            graph_break()
            return step(self, *args, **kwargs)
        finally:
            graph_break()
            torch.set_grad_enabled(prev)

    return wrapper


def _local(t):
    """A DTensor's local shard (sharing its storage); other values pass through."""
    return t._local_tensor if _is_dtensor(t) else t


_DTENSOR: list = []  # [torch.distributed.tensor.DTensor, or None], once looked up


@assume_constant_result  # under torch.compile: looked up eagerly, a constant
def _dtensor_class() -> type | None:
    if not _DTENSOR:
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # torch built without distributed
            DTensor = None
        _DTENSOR.append(DTensor)
    return _DTENSOR[0]


def _is_dtensor(t) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def _any_dtensor(tensors) -> bool:
    cls = _dtensor_class()
    # one issubclass per distinct type: several times cheaper than isinstance per tensor
    return cls is not None and any(issubclass(c, cls) for c in set(map(type, tensors)))


def _fused_update(update, group, params, grads, states, grad_scale, found_inf, elementwise,
                  untraced=False):
    # An update marked ``traceable`` (cpp: one torch.library operator call per group,
    # optimlab/kernels/ops.py) runs inside the compiled region: under torch.compile its
    # operator is in the graph (triton: optimlab::triton_<algorithm>_, kernels/triton/_ops.py).
    # Any other fused update (triton's SparseAdam: sparse grads, a Python int step) runs
    # behind torch.compiler.disable: a graph break, the kernel runs eagerly.
    if not untraced and not getattr(update, "traceable", False):
        _fused_update_untraced(update, group, params, grads, states, grad_scale, found_inf,
                               elementwise, True)
        return
    # Elementwise kernels update each DTensor's local shard in place (FSDP2 params are
    # sharded DTensors; the update needs no communication). Row/column reductions
    # (Adafactor) and matrix functions (Muon) need the whole tensor: no shortcut there.
    if not elementwise or not _any_dtensor(params):
        update(group, params, grads, states, grad_scale=grad_scale, found_inf=found_inf)
        return
    if not untraced and torch.compiler.is_compiling():  # local shards are taken eagerly
        _fused_update_untraced(update, group, params, grads, states, grad_scale, found_inf,
                               elementwise, True)
        return
    local = {k: [_local(t) for t in v] for k, v in states.items()}
    update(group, [_local(t) for t in params], [_local(t) for t in grads], local,
           grad_scale=grad_scale, found_inf=found_inf)
    for k, lst in local.items():  # state an update created lazily: sharded like its param
        for i, new in enumerate(lst):
            if new is not _local(states[k][i]):
                p = params[i]
                if _is_dtensor(p) and not _is_dtensor(new):
                    new = type(p).from_local(new, p.device_mesh, p.placements,
                                             shape=p.shape, stride=p.stride())
                states[k][i] = new


_fused_update_untraced = disable_dynamo(_fused_update)



_GRAD = operator.attrgetter("grad")
_IS_SPARSE = operator.attrgetter("is_sparse")
_DTYPE = operator.attrgetter("dtype")
_COMPLEX_DTYPES = frozenset({torch.complex32, torch.complex64, torch.complex128})


# Optimizer._plan's read of the params and Optimizer._gather's state lookup in C++
# (csrc/bindings.cpp plan_scan, state_columns), set when the cpp extension is loaded
# (kernels/cpp_build.py); None before that, or without the extension.
plan_scan: Callable | None = None
state_columns: Callable | None = None


class _Plan(NamedTuple):
    """One param group's planned step (nothing changed yet): what ``_gather`` takes."""

    group: dict
    params: list[Tensor]  # the group's params that have grads
    choice: _dispatch.BackendChoice
    grads: list[Tensor]
    dtypes: frozenset | None  # the params' dtypes (eager; None under torch.compile)


class _Work(NamedTuple):
    """One param group's gathered step: what ``_apply`` hands to the backend."""

    group: dict
    choice: _dispatch.BackendChoice
    params: list[Tensor]
    grads: list[Tensor]
    owners: list[Tensor]  # the params themselves (``params`` holds real views of complex ones)
    states: dict[str, list]
    passed: dict[str, list]  # the state tensors as handed over (to spot state created lazily)
    is_complex: list[bool]


class Optimizer(torch.optim.Optimizer):
    """Base class of optimlab's optimizers: a ``torch.optim.Optimizer`` with one generic step.

    Param groups, named params, hooks, ``state_dict()`` / ``load_state_dict()`` and
    ``zero_grad()`` are torch's own, so checkpoints interoperate with torch.optim both
    ways. ``step()`` works in three phases, and a step that raises changes nothing:

    1. plan: for every param group, pick the params that have grads, run the checks
       torch runs (sparse grads, fused and capturable devices, ``_check_group``) and
       resolve the group's backend (what ``backends()`` reports);
    2. gather: create missing state (``_init_state``) and collect
       ``{state key: [tensor per param]}`` for ``_state_keys(group)``, complex tensors
       viewed as real, as torch does;
    3. apply: call the chosen backend's registered update,
       ``update(group, params, grads, state)``; fused backends (``cpp``, ``triton``)
       also get ``grad_scale`` and ``found_inf`` from ``torch.amp.GradScaler``.
       State an update creates lazily (SGD's momentum buffer) is stored back.

    A subclass sets ``algorithm`` (its key in the backend registry, e.g. ``"adam"``)
    and ``defaults``, and implements ``_init_state``, ``_state_keys`` and, if needed,
    ``_check_group``; its updates are registered with
    ``optimlab._dispatch.register(algorithm, backend)``.

    Args:
        params (iterable): parameters, named parameters, or dicts defining param
            groups, as for ``torch.optim.Optimizer``.
        defaults (dict): the default value of each param group option.
    """

    #: key into the backend registry, e.g. "adam"
    algorithm: ClassVar[str] = ""
    #: message of the RuntimeError raised for sparse grads; None if they are accepted
    sparse_grad_error: ClassVar[str | None] = None
    #: complex params are updated through ``torch.view_as_real`` (torch's convention)
    complex_as_real: ClassVar[bool] = True
    #: group keys given defaults when old checkpoints are loaded (``__setstate__``)
    setstate_defaults: ClassVar[dict[str, Any]] = {}
    #: wording and device list of torch's capturable-device assertion for this algorithm
    capturable_tensors: ClassVar[str] = "params and state_steps"
    capturable_xla_forloop: ClassVar[bool] = True
    capturable_xla_foreach: ClassVar[bool] = False
    #: the update is elementwise (fused kernels may then run on DTensor local shards)
    elementwise: ClassVar[bool] = True
    #: torch's foreach update asserts on ``differentiable=True`` (all but SGD)
    foreach_refuses_differentiable: ClassVar[bool] = True
    #: state keys that may be absent (created lazily, or only for some shapes)
    lazy_state: ClassVar[frozenset[str]] = frozenset()
    #: state keys whose entries an update replaces (Python numbers: SparseAdam's int ``step``)
    rebound_state: ClassVar[frozenset[str]] = frozenset()
    #: torch's RuntimeError for sparse grads with ``fused=True`` (None: no fused option)
    fused_sparse_error: ClassVar[str | None] = None

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        # Each algorithm class also derives from its torch.optim counterpart (after this
        # base in the MRO), so isinstance checks in frameworks hold; its arguments were
        # checked by the subclass, so only torch's base constructor runs here.
        torch.optim.Optimizer.__init__(self, params, defaults)

    # ---- what a subclass provides -------------------------------------------------
    def _init_state(self, group: dict, p: Tensor) -> dict[str, Any]:
        """Fresh state for ``p`` (called when its state is empty)."""
        raise NotImplementedError

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        """State entries the update reads and writes, in ``_init_state`` order."""
        raise NotImplementedError

    def _check_group(self, group: dict, params: list[Tensor]) -> None:
        """Raise for a group that cannot be stepped (before anything changes)."""

    # ---- backend queries ------------------------------------------------------------
    def backends(self) -> list[_dispatch.BackendChoice]:
        """The backend each param group resolves to now, and why.

        Resolved as the next ``step()`` resolves it (constructor flags, then the
        ``OPTIMLAB_BACKEND`` environment variable, then the device's default, then
        whether that fused backend takes the group: sparse grads, tensors on another
        device), for the group's params that have grads now, or all of them when none
        has a grad yet. Resolving the default may check whether a fused backend can run
        (building the C++ extension on first use).

        Returns:
            One ``BackendChoice(name, reason)`` per param group.
        """
        out = []
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None] or list(g["params"])
            grads = [p.grad for p in params if p.grad is not None]
            out.append(self._choose(g, params, grads))
        return out

    # ---- the generic step -----------------------------------------------------------
    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], float] | None = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            if getattr(self, "_gradient_release", None) is not None:
                raise RuntimeError(
                    "step(closure) is not supported under gradient release: each param is "
                    "updated during backward (optimlab.gradient_release); call remove() first")
            with torch.enable_grad():
                loss = closure()
        # plan every group (checks, backend), then gather every group's state (created
        # lazily; checked), and only then update: a step that raises changes nothing.
        plans = [self._plan(group) for group in self.param_groups]
        work = [self._gather(*plan) for plan in plans if plan.params]
        for w in work:
            self._apply(w)
        return loss

    def _step_params(self, group: dict, params: list[Tensor]) -> None:
        """Update only ``params`` of ``group`` (plan, gather, apply): gradient release."""
        plan = self._plan(group, params)
        if plan.params:
            self._apply(self._gather(*plan))

    def _plan(self, group: dict, params: list[Tensor] | None = None) -> _Plan:
        candidates = group["params"] if params is None else params
        compiling = torch.compiler.is_compiling()
        if compiling:  # what dynamo traces: plain comprehensions
            params = [p for p in candidates if p.grad is not None]
            grads = [p.grad for p in params]
            dtypes = None
        elif (plan_scan is not None and type(candidates) is list
              and not torch._C._is_torch_function_mode_enabled()
              and (scan := plan_scan(candidates)) is not None):
            # one C++ pass (plain Tensor/Parameter params; kernels/cpp_build.py installs it
            # with the cpp extension): what the passes below read
            params, grads, dtypes, any_sparse = scan
        else:  # per-param passes as map() of C-level callables: they run on every step
            grads = list(map(_GRAD, candidates))
            if any(map(operator.is_, grads, itertools.repeat(None))):
                params = [p for p, g in zip(candidates, grads) if g is not None]
                grads = [g for g in grads if g is not None]
            else:
                params = list(candidates)
            # the group's param dtypes, read once for the backend check and complex views
            dtypes = frozenset(map(_DTYPE, params))
            any_sparse = None
        # (torch.optim.Optimizer.__setstate__ adds "differentiable" to every optimizer's
        # defaults, not to the groups; our updates read it with .get)
        missing = next((k for k in self.defaults if k not in group and k != "differentiable"), None)
        if missing is not None:  # torch's update would fail on group[missing]
            where = next((i for i, g in enumerate(self.param_groups) if g is group), "?")
            raise KeyError(f"param group {where} has no {missing!r} "
                           f"(a state_dict of another optimizer loaded into {type(self).__name__}?)")
        if compiling:
            any_sparse = any(g.is_sparse for g in grads)
        elif any_sparse is None and self.sparse_grad_error is not None:
            any_sparse = any(map(_IS_SPARSE, grads))
        if self.sparse_grad_error is not None and any_sparse:
            raise RuntimeError(self.sparse_grad_error)
        if group.get("fused") and params:
            self._check_fused(params)
        self._check_group(group, params)
        if (params and group.get("foreach") and group.get("differentiable")
                and self.foreach_refuses_differentiable):
            raise AssertionError("_foreach ops don't support autograd")
        choice = self._choose(group, params, grads, any_sparse)
        _dispatch.check(choice.name, self.algorithm, group, params, dtypes)
        if group.get("capturable") and not compiling:
            foreach = choice.name == "foreach"
            xla = self.capturable_xla_foreach if foreach else self.capturable_xla_forloop
            self._check_capturable(params, xla=xla)
        return _Plan(group, params, choice, grads, dtypes)

    def _choose(self, group: dict, params: list[Tensor], grads: list[Tensor],
                any_sparse: bool | None = None) -> _dispatch.BackendChoice:
        """The backend that runs ``group``'s ``params`` (with ``grads``) this step: the
        dispatcher's choice, unless that fused backend does not take the group (its
        ``accepts``: sparse grads, another device, ...), which then runs its fallback. Final:
        no update re-routes a group, and ``backends()`` answers with this."""
        choice = _dispatch.resolve(self.algorithm, group, params)
        if choice.name not in _dispatch.FUSED_BACKENDS:
            return choice
        if not self.elementwise and _any_dtensor(params):
            # a whole-tensor update of sharded DTensors needs DTensor's own ops
            return _dispatch.BackendChoice("forloop", f"{choice.name} needs whole tensors; "
                                           "DTensor params run the for-loop")
        return _dispatch.refused(self.algorithm, choice, group, params, grads, any_sparse)

    def _check_capturable(self, params: list[Tensor], xla: bool) -> None:
        # torch asserts this inside its updates (after creating state); we check first.
        supported = _get_capturable_supported_devices(supports_xla=xla)
        for p in params:
            step = self.state.get(p, {}).get("step")
            step_device = step.device.type if torch.is_tensor(step) else p.device.type
            if not (p.device.type == step_device and p.device.type in supported):
                raise AssertionError(
                    f"If capturable=True, {self.capturable_tensors} must be on supported "
                    f"devices: {supported}."
                )

    def _check_fused(self, params: list[Tensor]) -> None:
        # torch's fused contract (torch checks on a param's first step; this is as cheap)
        supported = _get_fused_kernels_supported_devices()
        if not all(p.device.type in supported and p.is_floating_point() for p in params):
            for p in params:
                _device_dtype_check_for_fused(p)  # raises torch's error for the first
        if self.fused_sparse_error is not None and any(p.grad.is_sparse for p in params):
            raise RuntimeError(self.fused_sparse_error)

    def _init_group(self, group: dict) -> None:
        """Create the missing state of ``group``'s params that have grads (what ``_gather``
        does lazily). Called under ``torch.compile`` only: dynamo runs a method of this name
        of a ``torch.optim.Optimizer`` eagerly instead of tracing it, as for torch.optim's
        own (torch/_dynamo/variables/optimizer.py), so the first compiled step already sees
        the state it will keep, and the second does not recompile."""
        for p in group["params"]:
            if p.grad is not None and not self.state.get(p):
                self._new_state(group, p)

    def _new_state(self, group: dict, p: Tensor) -> dict:
        """Create ``p``'s state (``_init_state``); torch leaves ``state[p]`` absent when
        there is nothing to keep."""
        p_state = self._init_state(group, p)
        if "kahan_sum" in group:  # low-precision options (all four keys or none: low_precision.py)
            from . import low_precision  # opt-in: state_dtype, kahan_comp, sr_seed/sr_step

            p_state = low_precision.new_state(self, group, p, p_state)
        if not p_state:
            return {}
        self.state[p].update(p_state)
        return self.state[p]

    def _gather(self, group: dict, params: list[Tensor], choice: _dispatch.BackendChoice,
                grads: list[Tensor], dtypes: frozenset | None = None) -> _Work:
        """Create missing state, and gather ``{state_key: [tensor per param]}`` (complex
        params, grads and state as real views). Raises, before any update, for state a
        checkpoint of another optimizer left incomplete. ``grads`` are the params' grads
        as the plan read them; ``dtypes``, the params' dtypes (None: not read yet)."""
        keys = self._state_keys(group)
        states = None
        compiling = torch.compiler.is_compiling()
        if not compiling and state_columns is not None and isinstance(self.state, dict):
            # every param's state, key by key, in one C++ pass (kernels/cpp_build.py installs it
            # with the cpp extension): None when some param has no state yet
            columns = state_columns(self.state, params, keys)
            if columns is not None:
                states = dict(zip(keys, columns))
        if states is not None:
            pass
        elif compiling:
            self._init_group(group)  # dynamo runs it eagerly: see _init_group
            per_param = [self.state.get(p) for p in params]
        else:  # (dict.get via map: the tensor hash is the only Python-level call per param)
            per_param = list(map(self.state.get, params))
        if states is None and not all(per_param):  # a param without state yet (C-level truthiness)
            per_param = [s or self._new_state(group, p) for s, p in zip(per_param, params)]
        owners, grads = list(params), list(grads)
        # (map with C-level callables: these run per param on every step; Tensor.is_complex()
        # is also several times cheaper than torch.is_complex, no __torch_function__ dispatch)
        if states is None and not compiling:
            try:  # one C-level pass per key (3x cheaper than one pass for all keys, then zip(*...))
                states = {k: list(map(operator.itemgetter(k), per_param)) for k in keys}
            except KeyError:  # an entry is missing: the per-key pass below says which
                pass
        if states is None:
            states = {k: list(map(dict.get, per_param, itertools.repeat(k))) for k in keys}
        if not self.complex_as_real or (dtypes is not None and dtypes.isdisjoint(_COMPLEX_DTYPES)):
            is_complex = [False] * len(params)  # the usual case, known from the plan's dtypes
        else:
            is_complex = list(map(Tensor.is_complex, params))
        complex_idx = [i for i, c in enumerate(is_complex) if c] if any(is_complex) else []
        for i in complex_idx:
            params[i] = torch.view_as_real(params[i])
            grads[i] = torch.view_as_real(grads[i])
            for lst in states.values():
                if torch.is_tensor(lst[i]) and torch.is_complex(lst[i]):
                    lst[i] = torch.view_as_real(lst[i])
        for k, lst in states.items():
            if k not in self.lazy_state and any(map(operator.is_, lst, itertools.repeat(None))):
                i = lst.index(None)
                raise KeyError(
                    f"{type(self).__name__}: {_dispatch.param_name(group, i)} has state without "
                    f"{k!r} (a state_dict of another optimizer loaded?)")
        # the entries as handed over, for state an update may create or replace (see _apply)
        passed = {k: list(v) for k, v in states.items() if k in self.lazy_state or k in self.rebound_state}
        return _Work(group, choice, params, grads, owners, states, passed, is_complex)

    def _apply(self, w: _Work) -> None:
        """Run the chosen backend's update on gathered work; store back state it created."""
        group, choice, params, grads, states = w.group, w.choice, w.params, w.grads, w.states
        update = _dispatch.kernel(self.algorithm, choice.name)
        if "kahan_sum" in group:  # low-precision options (all four keys or none: low_precision.py)
            from . import low_precision  # opt-in: float32 working copies, rounded writes

            update = low_precision.wrap(self, w, update)
        # torch.amp.GradScaler sets these on optimizers with _step_supports_amp_scaling
        # (fused=True): it then neither unscales the grads nor skips the step itself.
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if choice.name in _dispatch.FUSED_BACKENDS:
            # fused updates unscale inside the kernel and skip the step where found_inf
            _fused_update(update, group, params, grads, states, grad_scale, found_inf,
                          self.elementwise)
        elif grad_scale is None and found_inf is None:
            update(group, params, grads, states)
        else:  # a group planned off the fused backend (or fused=False): the same contract
            from ._common import amp_on_host

            if amp_on_host(grads, grad_scale, found_inf):  # skipped: nothing changes
                return
            update(group, params, grads, states)  # on the unscaled grads
        # An update may create state lazily (SGD's momentum buffer) or replace a number
        # (SparseAdam's step): store it back. Other entries are updated in place.
        for k, lst in states.items():
            if (k not in self.lazy_state and k not in self.rebound_state) or all(
                    map(operator.is_, lst, w.passed[k])):
                continue
            for i, new in enumerate(lst):
                if new is None or new is w.passed[k][i]:
                    continue
                if w.is_complex[i] and not torch.is_complex(new):
                    new = torch.view_as_complex(new)
                self.state[w.owners[i]][k] = new

    # ---- checkpoints ----------------------------------------------------------------
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.setstate_defaults.items():
                group.setdefault(key, value)
            # Older checkpoints store ``step`` as a Python number.
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if len(p_state) and "step" in p_state and not torch.is_tensor(p_state["step"]):
                    on_device = group.get("capturable") or group.get("fused")
                    p_state["step"] = torch.tensor(
                        float(p_state["step"]),
                        dtype=_get_scalar_dtype(is_fused=group.get("fused")),
                        device=p.device if on_device else None,
                    )


def step_tensor(group: dict, p: Tensor) -> Tensor:
    """A fresh ``step`` counter laid out as torch lays it out."""
    if group.get("capturable") or group.get("fused"):
        return torch.zeros((), dtype=_get_scalar_dtype(is_fused=group.get("fused")), device=p.device)
    return torch.tensor(0.0, dtype=_get_scalar_dtype())


def zeros_like(p: Tensor) -> Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)
