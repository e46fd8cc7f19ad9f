"""differentiable=True: a step is differentiable w.r.t. params, grads and state, as in torch.

Like torch's own test (``_diff_fn`` in test/optim/test_optim.py), one step runs from a
state whose elementwise tensors require grad; we compare the step's outputs *and* the
gradients of a random projection of them w.r.t. every input, against torch.

Tensor hyperparameters (lr, betas, weight_decay, ...; torch's ``*_differentiable_*`` tests):
two steps through ``backward(create_graph=True)``, then the results and the gradients w.r.t.
params, grad and the hyperparameters are compared with torch's (or torch's exception), and
torch's own gradcheck cases run on optimlab.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import optimlab
from helpers import outcome
from optim_db import implemented

DTYPE = torch.float64


def _cases():
    for spec in implemented():
        if "differentiable" not in spec.info.supported_impls:
            continue
        for cfg in spec.configs(DTYPE):
            if not cfg.complex_param and cfg.problem is None:
                yield pytest.param(spec, cfg, id=f"{spec.name}-{cfg.desc}")


def _warm_state(spec, cfg):
    """State after two ordinary steps of torch's optimizer (the starting point)."""
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1)))
    opt = spec.torch_cls([p], **cfg.kwargs)
    for i in range(2):
        p.grad = torch.sin(p.detach() * (i + 2))
        opt.step()
    return p.detach(), dict(opt.state[p])


def _diff_step(cls, kwargs, p0, g, state):
    p = p0.clone()
    p.grad = g
    opt = cls([p], **kwargs, differentiable=True)
    opt.state[p].update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    opt.step()
    return (p,) + tuple(v for v in opt.state[p].values() if torch.is_tensor(v) and v.requires_grad)


@pytest.mark.parametrize("spec,cfg", _cases())
def test_differentiable_step_matches_torch(spec, cfg):
    kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cfg.kwargs.items()}
    warm = outcome(lambda: _warm_state(spec, cfg))
    if warm[0] == "raise":  # torch refuses the configuration itself: covered by test_errors
        pytest.skip(f"torch refuses {cfg.desc!r} on CPU: {warm[2][:60]}")
    p_value, state = warm[1]
    results = []
    for cls in (spec.torch_cls, spec.ours_cls):
        p0 = p_value.clone().requires_grad_(True)
        g = torch.cos(p_value * 3).requires_grad_(True)
        leaves = {k: (v.clone().requires_grad_(True) if torch.is_tensor(v) and v.shape == p0.shape else v)
                  for k, v in state.items()}
        res = outcome(lambda: _diff_step(cls, kwargs, p0, g, leaves))
        if res[0] == "ok":
            outs = res[1]
            weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o) for o in outs]
            inputs = [p0, g] + [v for v in leaves.values() if torch.is_tensor(v) and v.requires_grad]
            grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), inputs,
                                        allow_unused=True)
            res = ("ok", [o.detach() for o in outs], grads)
        results.append(res)
    ref, ours = results
    if ref[0] == "raise":
        assert ours[0] == "raise" and ours[1:] == ref[1:], (ours, ref)
        return
    assert ours[0] == "ok", ours
    assert len(ours[1]) == len(ref[1]) and len(ours[2]) == len(ref[2])
    for a, b in zip(ours[1] + list(ours[2]), ref[1] + list(ref[2])):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---- Tensor hyperparameters -------------------------------------------------------------------
# torch's TestDifferentiableOptimizer differentiates through Tensor hyperparameters
# (test_{adam,adamw}_differentiable_{lr,weight_decay,betas,all_hyperparams} and SGD's
# test_differentiable_{lr,weight_decay,weight_decay_and_lr}): two steps, each after a
# backward with create_graph=True, then gradients w.r.t. the hyperparameters. The table
# below makes every numeric hyperparameter of every differentiable optimizer a Tensor (with
# and without requires_grad): torch either gives gradients, which ours must equal, or raises,
# which ours must do identically.
HYPERPARAMS = {  # name -> (hyperparameters, option variants)
    "SGD": (dict(lr=0.01, momentum=0.9, dampening=0.1, weight_decay=0.1),
            [dict(), dict(nesterov=True, dampening=0.0), dict(maximize=True)]),
    "Adam": (dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.3),
             [dict(), dict(amsgrad=True), dict(maximize=True), dict(decoupled_weight_decay=True)]),
    "AdamW": (dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.3),
              [dict(), dict(amsgrad=True, maximize=True)]),
    "Adamax": (dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.3), [dict(), dict(maximize=True)]),
    "NAdam": (dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.3, momentum_decay=4e-3),
              [dict(), dict(decoupled_weight_decay=True)]),
    "RAdam": (dict(lr=0.01, beta1=0.9, beta2=0.99, eps=1e-3, weight_decay=0.3),
              [dict(), dict(decoupled_weight_decay=True)]),
    "RMSprop": (dict(lr=0.01, alpha=0.9, eps=1e-3, weight_decay=0.3, momentum=0.5),
                [dict(), dict(centered=True), dict(maximize=True)]),
    "Adagrad": (dict(lr=0.01, lr_decay=0.01, weight_decay=0.3, initial_accumulator_value=0.1, eps=1e-3),
                [dict(), dict(maximize=True)]),
    "Adadelta": (dict(lr=0.5, rho=0.9, eps=1e-3, weight_decay=0.3), [dict(), dict(maximize=True)]),
    "ASGD": (dict(lr=0.01, lambd=0.01, alpha=0.75, t0=1.0, weight_decay=0.3), [dict(), dict(maximize=True)]),
    "Rprop": (dict(lr=0.01), [dict(), dict(maximize=True)]),
}


def _kwargs(hparams: dict) -> dict:
    """Constructor kwargs: ``beta1``/``beta2`` become ``betas`` (kept apart so that each can be
    a Tensor input, as torch's tests pass them)."""
    kwargs = dict(hparams)
    if "beta1" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    return kwargs


def _multistep(params, grad, state, cls, kwargs, *inputs):
    """Two steps, each after ``backward(create_graph=True)`` of a loss of the params (the
    first one accumulating into ``grad``), as torch's ``_multistep_backprop_diff_hyperparams_fn``;
    returns the loss before the second step, the params and the state tensors that require
    grad after it. ``inputs``: the tensors among ``state``/``kwargs``, for gradcheck."""
    params = params.clone()
    params.grad = grad
    kwargs = _kwargs({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    opt = cls([params], **kwargs)
    opt.state[params].update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    weights = torch.linspace(-1, 1, params.numel(), dtype=params.dtype).view_as(params)
    for _ in range(2):
        x = params.clone()  # the loss saves x, not params (which the step updates in place)
        loss = ((x * 0.7).sin() * weights).sum() + 0.3 * (x * x).sum()
        loss.backward(inputs=(params,), create_graph=True)
        opt.step()
        opt.zero_grad()
    return (loss, params) + tuple(v for v in opt.state[params].values() if torch.is_tensor(v) and v.requires_grad)


def _hyper_cases():
    for name, (hparams, variants) in HYPERPARAMS.items():
        keys = list(hparams)
        key_sets = [[k] for k in keys] + [keys]
        if "beta1" in keys:
            key_sets[-1:-1] = [["beta1", "beta2"], ["lr", "beta1", "beta2"], ["beta1"], ["beta2"]]
        for options in variants:
            for tensor_keys in key_sets:
                for requires_grad, hp_dtype in itertools.product((True, False), (DTYPE, torch.float32)):
                    opts = ",".join(f"{k}={v}" for k, v in options.items()) or "default"
                    yield pytest.param(name, options, tensor_keys, requires_grad, hp_dtype,
                                       id=f"{name}-{opts}-{'+'.join(tensor_keys)}-{'rg' if requires_grad else 'no_rg'}"
                                          f"-{str(hp_dtype)[6:]}")


def _hyper_run(cls, name, options, tensor_keys, requires_grad, hp_dtype=DTYPE):
    hparams, _ = HYPERPARAMS[name]
    gen = torch.Generator().manual_seed(0)
    params = torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True)
    grad = torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True)
    kwargs = {k: torch.tensor(v, dtype=hp_dtype, requires_grad=requires_grad) if k in tensor_keys else v
              for k, v in hparams.items() if k not in options}
    kwargs.update(options, differentiable=True)
    outs = _multistep(params, grad, {}, cls, kwargs)
    inputs = [params, grad] + [v for v in kwargs.values() if torch.is_tensor(v) and v.requires_grad]
    objective = outs[0] + sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum()
                              for o in outs[1:])
    grads = torch.autograd.grad(objective, inputs, allow_unused=True)
    return [o.detach() for o in outs], list(grads)


@pytest.mark.parametrize("name,options,tensor_keys,requires_grad,hp_dtype", _hyper_cases())
def test_tensor_hyperparams_match_torch(name, options, tensor_keys, requires_grad, hp_dtype):
    """The steps' results and the gradients w.r.t. params, grad and Tensor hyperparameters
    (float64 params; float64 or float32 hyperparameters) equal torch's; where torch raises,
    ours raises the same exception and message."""
    args = (name, options, tensor_keys, requires_grad, hp_dtype)
    ref = outcome(lambda: _hyper_run(getattr(torch.optim, name), *args))
    ours = outcome(lambda: _hyper_run(getattr(optimlab, name), *args))
    if ref[0] == "raise":
        assert ours[0] == "raise" and ours[1:] == ref[1:], (ours, ref)
        return
    assert ours[0] == "ok", ours
    (outs, grads), (ref_outs, ref_grads) = ours[1], ref[1]
    assert len(outs) == len(ref_outs) and len(grads) == len(ref_grads)
    for i, (a, b) in enumerate(zip(outs + grads, ref_outs + ref_grads)):
        assert (a is None) == (b is None), i
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"output/grad {i}: {m}")


def _adam_state(gen):
    return {
        "step": torch.tensor(10.0, dtype=DTYPE),
        "exp_avg": torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True),
        "exp_avg_sq": torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True),
        "max_exp_avg_sq": torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True),
    }


def _sgd_state(gen):
    return {"momentum_buffer": torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True)}


def _t(value):
    return torch.tensor(value, dtype=DTYPE, requires_grad=True)


# torch's own gradcheck cases (its TestDifferentiableOptimizer), run on optimlab
GRADCHECK = {
    "Adam-lr": ("Adam", _adam_state, lambda: dict(lr=_t(0.001))),
    "Adam-weight_decay": ("Adam", _adam_state, lambda: dict(weight_decay=_t(0.999))),
    "Adam-betas": ("Adam", _adam_state, lambda: dict(beta1=_t(0.9), beta2=_t(0.999), lr=_t([0.001]))),
    "Adam-all": ("Adam", _adam_state,
                 lambda: dict(lr=_t(0.001), weight_decay=_t(0.999), beta1=_t(0.9), beta2=_t(0.999))),
    "AdamW-lr": ("AdamW", _adam_state, lambda: dict(lr=_t(0.001))),
    "AdamW-weight_decay": ("AdamW", _adam_state, lambda: dict(weight_decay=_t(0.999))),
    "AdamW-betas": ("AdamW", _adam_state, lambda: dict(beta1=_t(0.9), beta2=_t(0.999))),
    "AdamW-all": ("AdamW", _adam_state,
                  lambda: dict(lr=_t(0.001), weight_decay=_t(0.999), beta1=_t(0.9), beta2=_t(0.999))),
    "SGD-lr": ("SGD", _sgd_state, lambda: dict(lr=_t(0.001))),
    "SGD-weight_decay": ("SGD", _sgd_state, lambda: dict(weight_decay=_t(0.9))),
    "SGD-weight_decay_and_lr": ("SGD", _sgd_state, lambda: dict(weight_decay=_t(0.9), lr=_t(0.001))),
    # beyond torch's list: the other hyperparameters torch differentiates through
    # (ASGD's lr/lambd also reach the next eta, which torch reads back with .item(): no
    # gradient through it, so gradcheck fails for torch too; compared above instead)
    "RAdam-lr": ("RAdam", lambda gen: {}, lambda: dict(lr=_t(0.01))),
    "RMSprop-momentum": ("RMSprop", lambda gen: {}, lambda: dict(momentum=_t(0.5), weight_decay=0.1)),
}


@pytest.mark.parametrize("case", list(GRADCHECK))
def test_tensor_hyperparams_gradcheck(case):
    """torch.autograd.gradcheck through two steps w.r.t. params, grad, state and the Tensor
    hyperparameters, on optimlab (torch's tests run this on torch.optim); the analytical
    gradients also equal torch's."""
    name, make_state, make_kwargs = GRADCHECK[case]
    results = []
    for cls in (getattr(torch.optim, name), getattr(optimlab, name)):
        gen = torch.Generator().manual_seed(0)
        params = torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True)
        grad = torch.rand(10, dtype=DTYPE, generator=gen).requires_grad_(True)
        state, kwargs = make_state(gen), dict(make_kwargs(), differentiable=True)
        tensors = [*state.values(), *kwargs.values()]
        if cls.__module__.startswith("optimlab"):
            assert torch.autograd.gradcheck(_multistep, (params, grad, state, cls, kwargs, *tensors))
        outs = _multistep(params, grad, state, cls, kwargs)
        inputs = [params, grad] + [t for t in tensors if torch.is_tensor(t) and t.requires_grad]
        objective = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs)
        results.append([o.detach() for o in outs] + list(torch.autograd.grad(objective, inputs, allow_unused=True)))
    ref, ours = results
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        assert (a is None) == (b is None), i
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"output/grad {i}: {m}")
