"""The cpp backend's fused kernels as torch operators: ``torch.ops.optimlab.<algorithm>_``.

One operator per algorithm kernel (``optimlab::adam_``, ``optimlab::sgd_``, ...), defined
from the table ``OPS`` below with ``torch.library``: a schema that declares every tensor
list the kernel writes (``Tensor(a!)[]``), a fake implementation (nothing to compute: the
operators return nothing) and a CPU implementation, registered by
``optimlab.kernels.cpu`` (``cpu_impl``), that runs the C++ kernels. So ``make_fx`` records a
step as one operator call per param group, ``torch.compile`` keeps it in the graph, and
functionalization knows what it mutates.

The operator boundary, per algorithm: the group's tensor lists, named as in torch's
functional API (``params, grads, exp_avgs, ..., state_steps``), then the group's
hyperparameters as the user set them (``lr, beta1, beta2, weight_decay, eps, ...``), then
four arguments every operator takes:

* ``tensor_hparams`` (``Tensor?[]``): empty when every hyperparameter is a number (the
  usual case); otherwise one entry per ``float`` argument of the schema, in order, holding
  the Tensor given for it (torch accepts a Tensor ``lr``, and Tensor betas for Adam/AdamW)
  or None. The implementation then computes with the Tensor exactly as the for-loop does
  (a float32 ``lr`` rounds the step size to float32), and under ``torch.compile`` the
  Tensor is a graph input rather than a ``.item()`` (a graph break);
* ``float_hparams`` (``Tensor?[]``): empty, or one entry per ``float`` argument holding
  its value as a 0-dim float64 tensor (or None), which the implementation reads back as
  the same Python float. ``call`` passes every number this way where ops are traced:
  under ``torch.compile`` a float argument of an operator is a constant the graph is
  guarded on, so an ``lr`` set by a scheduler would recompile the step at every change,
  while a float that enters the graph through tensor arithmetic becomes a graph input
  after one recompile (dynamo's automatic dynamic floats), as in torch.optim's step;
* ``grad_scale``, ``found_inf`` (``Tensor?``): torch's fused AMP arguments.

Step counters (and ASGD's ``eta``/``mu``, NAdam's ``mu_product``) are 0-dim tensors the
operator reads and advances itself: everything that depends on the step (bias
corrections, step sizes) is computed inside the operator, on the host, by the
algorithm's shared Python scalar function, from the counters' values at that moment.
A compiled or ``make_fx`` graph therefore bakes no step-dependent constant (replaying it
advances the step), never needs a counter's value while tracing (no ``.item()``, no
recompile per step), and gives the eager numbers bit for bit.

``grads`` are declared mutated by every operator: with ``grad_scale`` the kernels write
the unscaled grads back, as torch's fused optimizers do.

Calling: ``call(algorithm, args, grad_scale, found_inf)``. In plain eager code it runs
the CPU implementation directly: the dispatcher's boxing of ``Tensor[]`` arguments into a
Python kernel costs ~0.35 us per tensor and ~17 us per call (measured on the project's
VM), +25% on a step of many small tensors (benchmarks/results/cpu-ops-overhead.md).
Wherever ops are recorded or transformed (``torch.compile``, ``make_fx``, dispatch
modes, functorch; ``optimlab._compat.tracing``) it calls the operator.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._compat import tracing

__all__ = ["OPS", "NAMESPACE", "call", "cpu_impl", "op", "schema"]

NAMESPACE = "optimlab"

# algorithm -> (schema arguments, mutated arguments). Every operator also takes
# ``Tensor?[] tensor_hparams, Tensor?[] float_hparams, Tensor? grad_scale, Tensor? found_inf``
# (appended) and returns nothing. Names follow torch's functional optimizers (torch.optim.adam.adam, ...).
OPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "adam": (
        "Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
        "Tensor[] max_exp_avg_sqs, Tensor[] state_steps, float lr, float beta1, float beta2, "
        "float weight_decay, float eps, bool amsgrad, bool maximize, bool decoupled_weight_decay",
        ("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs", "state_steps"),
    ),
    "sgd": (
        "Tensor[] params, Tensor[] grads, Tensor[] momentum_buffers, bool[] new_momentum_buffers, "
        "float lr, float weight_decay, float momentum, float dampening, bool nesterov, bool maximize",
        ("params", "grads", "momentum_buffers"),
    ),
    "adagrad": (
        "Tensor[] params, Tensor[] grads, Tensor[] state_sums, Tensor[] state_steps, float lr, "
        "float lr_decay, float weight_decay, float eps, bool maximize",
        ("params", "grads", "state_sums", "state_steps"),
    ),
    "adadelta": (
        "Tensor[] params, Tensor[] grads, Tensor[] square_avgs, Tensor[] acc_deltas, "
        "Tensor[] state_steps, float lr, float rho, float eps, float weight_decay, bool maximize",
        ("params", "grads", "square_avgs", "acc_deltas", "state_steps"),
    ),
    "adamax": (
        "Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_infs, Tensor[] state_steps, "
        "float lr, float beta1, float beta2, float eps, float weight_decay, bool maximize",
        ("params", "grads", "exp_avgs", "exp_infs", "state_steps"),
    ),
    "asgd": (
        "Tensor[] params, Tensor[] grads, Tensor[] axs, Tensor[] mus, Tensor[] etas, "
        "Tensor[] state_steps, float lr, float lambd, float alpha, float t0, float weight_decay, "
        "bool maximize",
        ("params", "grads", "axs", "mus", "etas", "state_steps"),
    ),
    "nadam": (
        "Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
        "Tensor[] mu_products, Tensor[] state_steps, float lr, float beta1, float beta2, "
        "float weight_decay, float momentum_decay, float eps, bool decoupled_weight_decay, "
        "bool maximize",
        ("params", "grads", "exp_avgs", "exp_avg_sqs", "mu_products", "state_steps"),
    ),
    "radam": (
        "Tensor[] params, Tensor[] grads, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
        "Tensor[] state_steps, float lr, float beta1, float beta2, float weight_decay, float eps, "
        "bool decoupled_weight_decay, bool maximize",
        ("params", "grads", "exp_avgs", "exp_avg_sqs", "state_steps"),
    ),
    "rmsprop": (
        "Tensor[] params, Tensor[] grads, Tensor[] square_avgs, Tensor[] grad_avgs, "
        "Tensor[] momentum_buffers, Tensor[] state_steps, float lr, float alpha, float eps, "
        "float weight_decay, float momentum, bool centered, bool maximize",
        ("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers", "state_steps"),
    ),
    "rprop": (
        "Tensor[] params, Tensor[] grads, Tensor[] prevs, Tensor[] step_sizes, Tensor[] state_steps, "
        "float etaminus, float etaplus, float step_size_min, float step_size_max, bool maximize",
        ("params", "grads", "prevs", "step_sizes", "state_steps"),
    ),
    # row_vars, col_vars: one per param of 2+ dims, variances: one per other param (torch's
    # lists hold None for the others); eps1 resolved (never None)
    "adafactor": (
        "Tensor[] params, Tensor[] grads, Tensor[] row_vars, Tensor[] col_vars, Tensor[] variances, "
        "Tensor[] state_steps, float lr, float beta2_decay, float eps1, float eps2, float d, "
        "float weight_decay, bool maximize",
        ("params", "grads", "row_vars", "col_vars", "variances", "state_steps"),
    ),
}
_COMMON = ("Tensor?[] tensor_hparams, Tensor?[] float_hparams, Tensor? grad_scale=None, "
           "Tensor? found_inf=None")

_IMPLS: dict[str, Callable] = {}  # algorithm -> CPU implementation (registered by cpu.py)
_FLOATS: dict[str, tuple[int, ...]] = {}  # algorithm -> positions of its float arguments


def _arguments(algorithm: str) -> list[tuple[str, str]]:
    return [tuple(a.split()) for a in OPS[algorithm][0].split(", ")]


def schema(algorithm: str) -> str:
    """The operator's schema, with alias annotations on the tensor lists it writes."""
    mutated = OPS[algorithm][1]
    args = []
    for i, (kind, name) in enumerate(_arguments(algorithm)):
        if name in mutated:
            if kind != "Tensor[]":
                raise ValueError(f"{algorithm}: mutated argument {name} is not a Tensor[]")
            kind = f"Tensor({chr(ord('a') + i)}!)[]"
        args.append(f"{kind} {name}")
    unknown = set(mutated) - {name for _, name in _arguments(algorithm)}
    if unknown:
        raise ValueError(f"{algorithm}: mutated arguments not in the schema: {sorted(unknown)}")
    return f"({', '.join(args)}, {_COMMON}) -> ()"


def _fake(*args, **kwargs) -> None:
    """Nothing to compute: every operator only writes its inputs in place."""


_lib = torch.library.Library(NAMESPACE, "DEF")
for _alg in OPS:
    _lib.define(f"{_alg}_{schema(_alg)}")
    torch.library.register_fake(f"{NAMESPACE}::{_alg}_", _fake, lib=_lib)
    _FLOATS[_alg] = tuple(i for i, (kind, _) in enumerate(_arguments(_alg)) if kind == "float")
del _alg


def op(algorithm: str) -> torch._ops.OpOverload:
    """``torch.ops.optimlab.<algorithm>_.default``."""
    return getattr(getattr(torch.ops, NAMESPACE), f"{algorithm}_").default


def cpu_impl(algorithm: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``impl(*args, grad_scale=None, found_inf=None)`` (the schema's
    arguments before ``tensor_hparams``, each float argument possibly a Tensor) as the CPU
    implementation of ``optimlab::<algorithm>_``."""
    floats, n = _FLOATS[algorithm], len(_arguments(algorithm))
    tail_names = ("tensor_hparams", "float_hparams", "grad_scale", "found_inf")

    def wrap(impl: Callable) -> Callable:
        def kernel(*args, **kwargs):
            # (the dispatcher leaves out trailing arguments that have their default value)
            args, tail = list(args[:n]), dict(zip(tail_names, args[n:]))
            tail.update(kwargs)
            for i, t in zip(floats, tail.get("float_hparams", ())):
                if t is not None:
                    args[i] = float(t)  # exactly the float the update read from the group
            for i, t in zip(floats, tail.get("tensor_hparams", ())):
                if t is not None:
                    args[i] = t
            impl(*args, grad_scale=tail.get("grad_scale"), found_inf=tail.get("found_inf"))

        _lib.impl(f"{algorithm}_", kernel, "CPU")
        _IMPLS[algorithm] = impl
        return impl

    return wrap


def call(algorithm: str, args: tuple, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    """Run ``optimlab::<algorithm>_`` on ``args`` (the schema's arguments before
    ``tensor_hparams``; a float argument may be given as a Tensor): the operator where ops
    are traced, its CPU implementation directly in plain eager code (see the module doc)."""
    if not tracing():
        _IMPLS[algorithm](*args, grad_scale=grad_scale, found_inf=found_inf)
        return
    floats, args = _FLOATS[algorithm], list(args)
    tensor_hparams, float_hparams = [], []
    if any(isinstance(args[i], Tensor) for i in floats):
        tensor_hparams = [args[i] if isinstance(args[i], Tensor) else None for i in floats]
    one = torch.ones((), dtype=torch.float64)
    for i in floats:  # numbers enter through tensor arithmetic (see float_hparams above)
        float_hparams.append(None if isinstance(args[i], Tensor) else one * args[i])
        args[i] = 0.0  # unused: the implementation takes the value from the lists
    op(algorithm)(*args, tensor_hparams, float_hparams, grad_scale, found_inf)
