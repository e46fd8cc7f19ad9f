"""The "cpp" backend: fused C++ CPU kernels for every elementwise optimizer (and, in
``cpu_adafactor.py``, Adafactor's two-pass kernel).

The kernels (``csrc/``) make one vectorized, multi-threaded pass over memory per
tensor. They only do the elementwise update: every scalar (bias corrections,
step sizes, ``1 - beta1``, ``1 - rho``, ...) is computed on the host by the
algorithm's own shared Python functions: ``<algorithm>_scalars`` (per step: the kernel's
step-scalar columns; ``asgd_next`` for ASGD's next ``eta``/``mu``) and
``<algorithm>_group_scalars`` (the group's constants, in the kernel's argument order),
exactly as the for-loop backend computes them; the implementations here only pass their
results on.

Each kernel is a torch operator, ``torch.ops.optimlab.<algorithm>_`` (defined in
``ops.py``). This module holds both sides of it: the updates registered with the
dispatcher (``_adam_cpp``, ...: the group's tensors and hyperparameters handed to the
operator; what ``torch.compile`` traces and ``make_fx``
records) and the operators' CPU implementations (``_adam_impl``, ...: the C++ call with
the host scalars; what runs when the step or the compiled graph runs).

Step counters follow one protocol (``csrc/fused_apply.h``): the kernel reads them while it
checks its operands, calls back here with the next step values for the step-dependent
scalars (``_step_scalars``), and writes ``step + 1`` with the update. A step the kernel
refuses, or one ``found_inf`` skips, changes nothing, so nothing is ever taken back.
What the kernels do not take (sparse grads, tensors on another device, capturable) is
refused when the step is planned (``accepts``): the plan runs those groups elsewhere, and
``Optimizer.backends()`` says so; no update re-routes a group.

Building and loading the extension (on first use, then cached) and the backend's
availability are ``cpp_build.py``'s part.
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import Tensor

from .. import _dispatch
from ..optimizer import _get_value, _to_scalar
from . import ops
from .cpp_build import availability, build_directory, capability, load  # (public here too)

__all__ = ["availability", "build_directory", "load", "capability"]

_DTYPE = operator.attrgetter("dtype")
_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64,
                     torch.complex64, torch.complex128})  # complex: updated as real views


def check_group(algorithm: str, group: dict, params: list, dtypes: frozenset | None = None) -> None:
    """The cpp backend's plan-time check (before any param group is updated): a param
    dtype the kernels do not take is refused with an error naming the parameter. (torch's
    for-loop has no CPU kernels for those dtypes either: float8 params fail in its lerp/add.)
    Non-CPU tensors and sparse grads are not refused: ``accepts`` plans them onto the
    for-loop/foreach.
    ``dtypes``: the params' dtypes, when the caller has read them."""
    if not params or (dtypes is not None and _DTYPES.issuperset(dtypes)):
        return  # the usual case
    # (dynamo traces this under torch.compile: a plain loop there, it cannot trace attrgetter)
    if not torch.compiler.is_compiling() and _DTYPES.issuperset(map(_DTYPE, params)):
        return  # one C-level pass
    for i, p in enumerate(params):
        if p.dtype not in _DTYPES:
            raise RuntimeError(
                f"optimlab {algorithm} (cpp backend): {_dispatch.param_name(group, i)} has dtype "
                f"{p.dtype}; the cpp backend supports float16, bfloat16, float32 and float64 "
                "(complex params are updated as real views)"
            )


_dispatch.register_check("cpp", check_group)


# ---- shared host-side helpers --------------------------------------------------------------
def _value(x) -> float:
    """A host number from a float or a 1-element tensor (after torch's own tensor rounding)."""
    return float(_get_value(x)) if isinstance(x, Tensor) else float(x)


def _real(params: list, *lists: list) -> list[list]:
    """``[params, *lists]`` with complex tensors viewed as real. Grads and state share their
    param's dtype, so when no param is complex (the usual case) nothing else is looked at."""
    # Tensor.is_complex() is several times cheaper than torch.is_complex() (no
    # __torch_function__ dispatch): this runs per tensor on every step.
    if not any(map(Tensor.is_complex, params)):
        return [params, *lists]
    return [[torch.view_as_real(t) if t is not None and t.is_complex() else t for t in lst]
            for lst in (params, *lists)]


def _skipped(found_inf) -> float:
    """found_inf's value (0.0 without AMP)."""
    return 0.0 if found_inf is None else float(found_inf.item())


_SPARSE_GRADS = frozenset({"sgd", "adagrad"})  # the cpp algorithms whose torch classes take sparse grads


def accepts(algorithm, group, params, grads, any_sparse=None) -> str | None:
    """The cpp backend's ``accepts`` (``_dispatch.register_accepts``, asked when the step is
    planned): None, or what the kernels do not take (the plan then runs the for-loop, or
    foreach for tensors on another device). ``any_sparse``: whether a grad is sparse, when
    the plan has read it (``optimizer.plan_scan``)."""
    # Under torch.compile dynamo shows every param group of a torch.optim.Optimizer with
    # capturable=True (torch/_dynamo/variables/optimizer.py, _set_capturable): not the
    # user's flag. CPU params cannot be capturable in eager (refused when the step is
    # planned), and on CPU the kernels' host reads of step counters need no device sync.
    if (group.get("capturable") and not torch.compiler.is_compiling()) or group.get("differentiable"):
        return "capturable/differentiable"
    # (torch keeps each grad on its param's device.) In eager, C-level passes: this runs on
    # every step; what dynamo traces: a plain loop (it graph-breaks on map of attrgetter)
    if not torch.compiler.is_compiling():
        # (the other algorithms' plans refuse sparse grads before this runs)
        if algorithm in _SPARSE_GRADS and (any(map(_IS_SPARSE, grads)) if any_sparse is None
                                           else any_sparse):
            return "sparse grads"
        if all(map(_IS_CPU, params)):  # (a grad is on its param's device: torch checks it)
            return None
    for g in grads:
        if g.is_sparse:
            return "sparse grads"
    for p in params:  # (also before any grad exists: Optimizer.backends())
        if not p.is_cpu:
            return f"tensors on {p.device.type}"
    return None


_IS_SPARSE = operator.attrgetter("is_sparse")
_IS_CPU = operator.attrgetter("is_cpu")
_dispatch.register_accepts("cpp", accepts)


def _by_dtype(params, *hparams) -> list:
    """Indices of params per dtype: host scalars computed from Tensor ``hparams`` are rounded
    like torch rounds them for that dtype (Python numbers give the same value for every dtype)."""
    if not any(isinstance(h, Tensor) for h in hparams):
        return [range(len(params))]
    dtypes = list(map(_DTYPE, params))
    if not dtypes or dtypes.count(dtypes[0]) == len(dtypes):  # the usual case: one dtype
        return [range(len(params))]
    buckets: dict[torch.dtype, list[int]] = {}
    for i, d in enumerate(dtypes):
        buckets.setdefault(d, []).append(i)
    return list(buckets.values())


def _pick(lst, idx):
    return lst if lst is None or len(idx) == len(lst) or len(lst) == 1 else [lst[i] for i in idx]


def _per_step(fn, values):
    """``[fn(v) for v in values]`` computing each distinct step once; ``[fn(v)]`` when every
    value is ``v`` (the usual case: the kernels and ``write_scalars`` take one value for all)."""
    if values and values.count(values[0]) == len(values):
        return [fn(values[0])]
    cache: dict[float, object] = {}
    out = []
    for v in values:
        if v not in cache:
            cache[v] = fn(v)
        out.append(cache[v])
    return out


def _step_scalars(fn):
    """A kernel's step-scalars callback (the step protocol, see the module doc): the next step
    values (one per tensor, or one for all) -> the columns of ``fn(step)``, a tuple of host
    numbers, one column per number (each one per tensor, or one for all)."""
    return lambda steps: list(zip(*_per_step(fn, steps)))


# ---- the updates: from a param group to one operator call -------------------------------------
# What runs under torch.compile (traced by dynamo) and make_fx: the operator's arguments read from the group (no host values of
# tensors, no extension call). Registered as the algorithm's cpp update; ``traceable`` tells
# the base class to call it inside the compiled region (optimizer._fused_update).
def _cpp_update(algorithm: str):
    """Register ``arguments(group, params, grads, state) -> the operator's arguments`` as
    ``algorithm``'s cpp update: one call of ``optimlab::<algorithm>_``."""

    def wrap(arguments):
        @functools.wraps(arguments)
        def update(group, params, grads, state, grad_scale=None, found_inf=None):
            ops.call(algorithm, arguments(group, params, grads, state), grad_scale, found_inf)

        update.traceable = True
        return _dispatch.register(algorithm, "cpp")(update)

    return wrap


@_cpp_update("adam")
def _adam_cpp(group, params, grads, state):
    beta1, beta2 = group["betas"]
    amsgrad = bool(group["amsgrad"])
    return (params, grads, state["exp_avg"], state["exp_avg_sq"],
            state["max_exp_avg_sq"] if amsgrad else [], state["step"], group["lr"], beta1, beta2,
            group["weight_decay"], group["eps"], amsgrad, bool(group["maximize"]),
            bool(group["decoupled_weight_decay"]))


@_dispatch.register("sgd", "cpp")
def _sgd_cpp(group, params, grads, state, grad_scale=None, found_inf=None):
    momentum = group["momentum"]
    bufs, new = [], []
    if momentum != 0:
        bufs = state["momentum_buffer"]
        new = [b is None for b in bufs]
        if any(new):
            if _skipped(found_inf):
                return  # nothing happens, not even the creation of momentum buffers
            for i, p in enumerate(params):
                if new[i]:  # torch: the buffer starts as a copy of the (decayed) grad, in the kernel
                    bufs[i] = torch.empty_like(p, memory_format=torch.preserve_format)
    ops.call("sgd", (params, grads, bufs, new, group["lr"], group["weight_decay"], momentum,
                     group["dampening"], bool(group["nesterov"]), bool(group["maximize"])),
             grad_scale, found_inf)


_sgd_cpp.traceable = True


@_cpp_update("adagrad")
def _adagrad_cpp(group, params, grads, state):
    return (params, grads, state["sum"], state["step"], group["lr"], group["lr_decay"],
            group["weight_decay"], group["eps"], bool(group["maximize"]))


@_cpp_update("adadelta")
def _adadelta_cpp(group, params, grads, state):
    return (params, grads, state["square_avg"], state["acc_delta"], state["step"], group["lr"],
            group["rho"], group["eps"], group["weight_decay"], bool(group["maximize"]))


@_cpp_update("adamax")
def _adamax_cpp(group, params, grads, state):
    beta1, beta2 = group["betas"]
    return (params, grads, state["exp_avg"], state["exp_inf"], state["step"], group["lr"], beta1,
            beta2, group["eps"], group["weight_decay"], bool(group["maximize"]))


@_cpp_update("asgd")
def _asgd_cpp(group, params, grads, state):
    return (params, grads, state["ax"], state["mu"], state["eta"], state["step"], group["lr"],
            group["lambd"], group["alpha"], group["t0"], group["weight_decay"], bool(group["maximize"]))


@_cpp_update("nadam")
def _nadam_cpp(group, params, grads, state):
    beta1, beta2 = group["betas"]
    return (params, grads, state["exp_avg"], state["exp_avg_sq"], state["mu_product"], state["step"],
            group["lr"], beta1, beta2, group["weight_decay"], group["momentum_decay"], group["eps"],
            bool(group["decoupled_weight_decay"]), bool(group["maximize"]))


@_cpp_update("radam")
def _radam_cpp(group, params, grads, state):
    beta1, beta2 = group["betas"]
    return (params, grads, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"], beta1,
            beta2, group["weight_decay"], group["eps"], bool(group["decoupled_weight_decay"]),
            bool(group["maximize"]))


@_cpp_update("rmsprop")
def _rmsprop_cpp(group, params, grads, state):
    momentum, centered = group["momentum"], bool(group["centered"])
    return (params, grads, state["square_avg"], state["grad_avg"] if centered else [],
            state["momentum_buffer"] if momentum > 0 else [], state["step"], group["lr"],
            group["alpha"], group["eps"], group["weight_decay"], momentum, centered,
            bool(group["maximize"]))


@_cpp_update("rprop")
def _rprop_cpp(group, params, grads, state):
    (etaminus, etaplus), (size_min, size_max) = group["etas"], group["step_sizes"]
    return (params, grads, state["prev"], state["step_size"], state["step"], etaminus, etaplus,
            size_min, size_max, bool(group["maximize"]))


# ---- the operators' CPU implementations: host scalars, then the C++ kernels ----------------------
# Run eagerly, with real tensors (plain eager steps call them directly, see ops.call; compiled
# graphs and make_fx replays through the operator): the kernels advance the step counters and
# call back for every step-dependent scalar, which comes from the algorithm's shared scalar
# function, called with exactly the arguments the for-loop passes (a Tensor lr computes as a Tensor).
@ops.cpu_impl("adam")
def _adam_impl(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
               weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, grad_scale=None,
               found_inf=None):
    from ..adam import adam_group_scalars, adam_scalars

    ext = load()
    lr, beta1, beta2, wd = _to_scalar(lr), _to_scalar(beta1), _to_scalar(beta2), weight_decay
    scalars = _step_scalars(lambda s: tuple(map(_value, adam_scalars(lr, beta1, beta2, s))))
    for idx in _by_dtype(params, lr, beta1, beta2, wd):
        constants = adam_group_scalars(lr, beta1, beta2, eps, wd, decoupled_weight_decay, params[idx[0]])
        ext.adam(
            _pick(params, idx), _pick(grads, idx), _pick(exp_avgs, idx), _pick(exp_avg_sqs, idx),
            _pick(max_exp_avg_sqs, idx) if amsgrad else [], _pick(state_steps, idx), scalars,
            *map(_value, constants), bool(decoupled_weight_decay), bool(amsgrad), bool(maximize),
            grad_scale, found_inf,
        )


@ops.cpu_impl("sgd")
def _sgd_impl(params, grads, momentum_buffers, new_momentum_buffers, lr, weight_decay, momentum,
              dampening, nesterov, maximize, grad_scale=None, found_inf=None):
    from ..sgd import sgd_group_scalars

    ext = load()
    if _skipped(found_inf):
        return
    momentum = _value(momentum)
    ext.sgd(
        *_real(params, grads, momentum_buffers if momentum != 0 else []),
        new_momentum_buffers if momentum != 0 else [],
        *map(_value, sgd_group_scalars(_to_scalar(lr), weight_decay, momentum, dampening)),
        bool(nesterov), bool(maximize), grad_scale, found_inf,
    )


@ops.cpu_impl("adagrad")
def _adagrad_impl(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                  grad_scale=None, found_inf=None):
    from ..adagrad import adagrad_group_scalars, adagrad_scalars

    ext = load()
    lr = _to_scalar(lr)
    ext.adagrad(
        *_real(params, grads, state_sums), state_steps,
        _step_scalars(lambda s: tuple(map(_value, adagrad_scalars(lr, lr_decay, s)))),
        *map(_value, adagrad_group_scalars(weight_decay, eps)), bool(maximize), grad_scale, found_inf,
    )


@ops.cpu_impl("adadelta")
def _adadelta_impl(params, grads, square_avgs, acc_deltas, state_steps, lr, rho, eps, weight_decay,
                   maximize, grad_scale=None, found_inf=None):
    from ..adadelta import adadelta_group_scalars

    load().adadelta(
        params, grads, square_avgs, acc_deltas, state_steps,
        *map(_value, adadelta_group_scalars(_to_scalar(lr), rho, eps, weight_decay)),
        bool(maximize), grad_scale, found_inf,
    )


@ops.cpu_impl("adamax")
def _adamax_impl(params, grads, exp_avgs, exp_infs, state_steps, lr, beta1, beta2, eps, weight_decay,
                 maximize, grad_scale=None, found_inf=None):
    from ..adamax import adamax_group_scalars, adamax_scalars

    ext = load()
    lr = _to_scalar(lr)
    scalars = _step_scalars(lambda s: tuple(map(_value, adamax_scalars(lr, beta1, s))))
    for idx in _by_dtype(params, beta1):
        constants = adamax_group_scalars(beta1, beta2, eps, weight_decay, params[idx[0]])
        ext.adamax(
            _pick(params, idx), _pick(grads, idx), _pick(exp_avgs, idx), _pick(exp_infs, idx),
            _pick(state_steps, idx), scalars, *map(_value, constants), bool(maximize),
            grad_scale, found_inf,
        )


@ops.cpu_impl("asgd")
def _asgd_impl(params, grads, axs, mus, etas, state_steps, lr, lambd, alpha, t0, weight_decay, maximize,
               grad_scale=None, found_inf=None):
    from ..asgd import asgd_decay, asgd_group_scalars, asgd_next

    ext = load()
    if _skipped(found_inf):
        return
    lr = _to_scalar(lr)
    new: list[tuple] = []  # the next step's (eta, mu), stored after the kernel's step

    def next_eta_mu(steps):  # (the kernel takes the state's eta and mu; no step scalars)
        # as the for-loop stores them: rounded to the default dtype (torch.as_tensor) also
        # when the state is float64 (after load_state_dict, float64 params)
        new.extend(_per_step(lambda s: tuple(map(_value, asgd_next(lr, lambd, alpha, t0, s))), steps))
        return []

    eta = ext.read_scalars(etas)  # the state's, as the for-loop reads them (.item())
    ext.asgd(
        params, grads, axs, state_steps, next_eta_mu, eta, ext.read_scalars(mus),
        _per_step(lambda e: _value(asgd_decay(_value(lambd), e)), eta),
        *map(_value, asgd_group_scalars(weight_decay)), bool(maximize), grad_scale, found_inf,
    )
    if new:  # (the kernel stepped)
        ext.write_scalars(etas, [eta for eta, _ in new])
        ext.write_scalars(mus, [mu for _, mu in new])


@ops.cpu_impl("nadam")
def _nadam_impl(params, grads, exp_avgs, exp_avg_sqs, mu_products, state_steps, lr, beta1, beta2,
                weight_decay, momentum_decay, eps, decoupled_weight_decay, maximize, grad_scale=None,
                found_inf=None):
    from ..nadam import nadam_group_scalars, nadam_scalars

    ext = load()
    if _skipped(found_inf):
        return  # mu_product advances with the step: a skipped step changes nothing
    lr = _to_scalar(lr)
    products = ext.read_scalars(mu_products)
    new_products: list[float] = []  # stored after the kernel's step

    def scalars(steps):
        # nadam_scalars once per distinct (step, product, dtype), with the state's 0-dim
        # mu_product (it returns the advanced value, stored in every product). (Usually one:
        # every param at the same step with the same product.)
        keys = list(zip(steps * len(products) if len(steps) == 1 else steps, products,
                        map(_DTYPE, mu_products)))
        if keys and keys.count(keys[0]) == len(keys):
            keys, owners = keys[:1], mu_products[:1]
        else:
            owners = mu_products
        cache: dict[tuple, tuple] = {}
        out = []
        for key, mp in zip(keys, owners):
            if key not in cache:
                *columns, new = nadam_scalars(lr, beta1, beta2, momentum_decay, key[0], mp.reshape(()))
                cache[key] = (tuple(map(_value, columns)), _value(new))
            out.append(cache[key][0])
            new_products.append(cache[key][1])
        return list(zip(*out))

    ext.nadam(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, scalars,
        *map(_value, nadam_group_scalars(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay)),
        bool(decoupled_weight_decay), bool(maximize), grad_scale, found_inf,
    )
    if new_products:  # (the kernel stepped)
        ext.write_scalars(mu_products, new_products)


@ops.cpu_impl("radam")
def _radam_impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, beta1, beta2, weight_decay, eps,
                decoupled_weight_decay, maximize, grad_scale=None, found_inf=None):
    from ..radam import radam_group_scalars, radam_scalars

    ext = load()
    lr = _to_scalar(lr)
    ext.radam(
        params, grads, exp_avgs, exp_avg_sqs, state_steps,
        _step_scalars(lambda s: tuple(map(_value, radam_scalars(beta1, beta2, s)))),
        *map(_value, radam_group_scalars(lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay)),
        bool(decoupled_weight_decay), bool(maximize), grad_scale, found_inf,
    )


@ops.cpu_impl("rmsprop")
def _rmsprop_impl(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps,
                  weight_decay, momentum, centered, maximize, grad_scale=None, found_inf=None):
    from ..rmsprop import rmsprop_group_scalars

    momentum, centered = _value(momentum), bool(centered)
    load().rmsprop(
        params, grads, square_avgs, momentum_buffers if momentum > 0 else [],
        grad_avgs if centered else [], state_steps,
        *map(_value, rmsprop_group_scalars(_to_scalar(lr), alpha, eps, weight_decay, momentum)),
        centered, bool(maximize), grad_scale, found_inf,
    )


@ops.cpu_impl("rprop")
def _rprop_impl(params, grads, prevs, step_sizes, state_steps, etaminus, etaplus, step_size_min,
                step_size_max, maximize, grad_scale=None, found_inf=None):
    from ..rprop import rprop_group_scalars

    load().rprop(
        params, grads, prevs, step_sizes, state_steps,
        *map(_value, rprop_group_scalars(etaminus, etaplus, step_size_min, step_size_max)),
        bool(maximize), grad_scale, found_inf,
    )


from . import cpu_adafactor  # noqa: E402,F401  Adafactor's update and operator (uses the helpers above)
