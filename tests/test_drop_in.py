"""Drop-in details frameworks and torch's own tests rely on: class hierarchy, namespace,
import cost, warning locations, scheduler references, fused-flag errors, wrong checkpoints."""

from __future__ import annotations

import copy
import gc
import subprocess
import sys
import warnings
import weakref

import pytest
import torch

import optimlab
from optimlab import _dispatch

NAMES = ["ASGD", "Adadelta", "Adafactor", "Adagrad", "Adam", "AdamW", "Adamax", "LBFGS", "Muon",
         "NAdam", "RAdam", "RMSprop", "Rprop", "SGD", "SparseAdam"]
FUSED = ["Adam", "AdamW", "Adagrad", "SGD"]  # torch's optimizers with a fused=True option
KWARGS = {"SGD": dict(lr=0.1, momentum=0.9)}


def _params(seed=0, shape=(4, 3), dtype=torch.float64):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, dtype=dtype))]


@pytest.mark.parametrize("name", NAMES)
def test_subclass_of_torch_counterpart(name):
    ours, theirs = getattr(optimlab, name), getattr(torch.optim, name)
    assert issubclass(ours, theirs) and issubclass(ours, optimlab.Optimizer)
    opt = ours(_params(), **KWARGS.get(name, {}))
    assert isinstance(opt, theirs)
    if name == "AdamW":  # as in torch, AdamW is an Adam
        assert isinstance(opt, torch.optim.Adam)
    # the step that runs is optimlab's, not the torch class's
    assert type(opt).step.__qualname__.startswith(("Optimizer.step", "LBFGS.step"))


@pytest.mark.parametrize("fused", [None, True])
@pytest.mark.parametrize("name", FUSED)
def test_amp_scaling_attribute_matches_torch(name, fused):
    kw = dict(KWARGS.get(name, {}), fused=fused)
    ours = getattr(optimlab, name)(_params(dtype=torch.float32), **kw)
    theirs = getattr(torch.optim, name)(_params(dtype=torch.float32), **kw)
    assert (getattr(ours, "_step_supports_amp_scaling", False)
            == getattr(theirs, "_step_supports_amp_scaling", False))


def test_namespace_has_everything_public_in_torch_optim():
    public = {n for n in dir(torch.optim) if not n.startswith("_")}
    public |= set(getattr(torch.optim, "__all__", []))
    missing = sorted(n for n in public if not hasattr(optimlab, n))
    assert not missing, f"torch.optim names missing from optimlab: {missing}"
    assert set(torch.optim.__all__) <= set(optimlab.__all__)


@pytest.mark.skipif(not hasattr(torch.optim, "swap_in_optimizer_params_and_state"),
                    reason="torch < 2.13 has no swap_in_optimizer_params_and_state")
def test_swap_in_optimizer_params_and_state_steps_like_torch():
    results = []
    for mod in (torch.optim, optimlab):
        params = _params()
        opt = mod.Adam(params, lr=0.1)
        params[0].grad = torch.ones_like(params[0])
        opt.step()
        other = [torch.nn.Parameter(p.detach().clone() * 2) for p in params]
        with mod.swap_in_optimizer_params_and_state(opt, {"w": other[0]}, copy.deepcopy(opt.state_dict())):
            other[0].grad = torch.ones_like(other[0])
            opt.step()
        params[0].grad = torch.full_like(params[0], 0.5)
        opt.step()
        results.append((other[0].detach(), params[0].detach(), opt.state_dict()["state"][0]["exp_avg"]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_import_does_not_import_dynamo_or_triton():
    code = ("import sys, optimlab\n"
            "bad = [m for m in ('triton', 'torch._dynamo', 'sympy') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fallback_warning_points_at_the_users_line(monkeypatch):
    monkeypatch.setitem(_dispatch._AVAILABILITY, "cpp", lambda: "no C++ compiler here")
    monkeypatch.setattr(_dispatch, "_warned", set())
    params = _params()
    params[0].grad = torch.ones_like(params[0])
    opt = optimlab.Adam(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()  # the warning must point here
    line = sys._getframe().f_lineno - 1
    fallbacks = [w for w in caught if "no C++ compiler here" in str(w.message)]
    assert len(fallbacks) == 1
    assert (fallbacks[0].filename, fallbacks[0].lineno) == (__file__, line)


@pytest.mark.parametrize("make", [
    lambda o: optimlab.lr_scheduler.LambdaLR(o, lambda epoch: 1.0),
    lambda o: optimlab.lr_scheduler.StepLR(o, 2),
    lambda o: optimlab.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
])
def test_scheduler_creates_no_reference_cycle(make):
    # torch's test_no_cyclic_references: the optimizer is freed by refcounting alone
    gc.collect()
    gc.disable()
    try:
        opt = optimlab.SGD(_params(), lr=0.5, momentum=0.9)
        sched = make(opt)
        del sched
        assert not gc.get_referrers(opt), "the optimizer is referenced from a cycle"
        ref = weakref.ref(opt)
        del opt
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("name", FUSED)
def test_fused_on_meta_params_raises_torchs_error(name):
    outcomes = []
    for mod in (torch.optim, optimlab):
        p = torch.nn.Parameter(torch.randn(3, device="meta"))
        p.grad = torch.randn(3, device="meta")
        opt = getattr(mod, name)([p], lr=0.1, fused=True)
        with pytest.raises(RuntimeError) as info:
            opt.step()
        outcomes.append(str(info.value))
    assert outcomes[1] == outcomes[0]
    assert outcomes[0].startswith("`fused=True` requires all the params to be floating point")


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_fused_with_sparse_grad_raises_torchs_error(name):
    outcomes = []
    for mod in (torch.optim, optimlab):
        p = torch.nn.Parameter(torch.randn(3, 2))
        p.grad = torch.randn(3, 2).to_sparse()
        opt = getattr(mod, name)([p], lr=0.1, fused=True)
        before = p.detach().clone()
        with pytest.raises(RuntimeError) as info:
            opt.step()
        assert torch.equal(p.detach(), before)
        outcomes.append(str(info.value))
    assert outcomes[1] == outcomes[0]


def _load_other_and_step(src, dst, mod):
    params = _params()

    def closure():
        for p in params:
            p.grad = None
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    source = getattr(torch.optim, src)(params, **KWARGS.get(src, {}))
    source.step(closure)
    target = getattr(mod, dst)(params, **KWARGS.get(dst, {}))
    before = [p.detach().clone() for p in params]
    try:
        target.load_state_dict(source.state_dict())
        target.step(closure)
    except Exception as e:  # noqa: BLE001 - compared with what torch raises
        unchanged = all(torch.equal(a, p.detach()) for a, p in zip(before, params))
        return "raise", type(e), str(e), unchanged
    return "ok", [p.detach().clone() for p in params]


@pytest.mark.parametrize("src,dst", [(s, d) for s in NAMES if s != "SparseAdam" for d in NAMES if d != s])
def test_checkpoint_of_another_optimizer(src, dst):
    """torch raises (KeyError, mostly) or steps; optimlab raises a KeyError where torch
    raises one of its own (never a binding error), changes nothing, or steps like torch."""
    theirs = _load_other_and_step(src, dst, torch.optim)
    ours = _load_other_and_step(src, dst, optimlab)
    if theirs[0] == "ok":
        assert ours[0] == "ok", ours
        for a, b in zip(ours[1], theirs[1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        return
    assert ours[0] == "raise", f"torch raised {theirs[1].__name__}: {theirs[2]}; optimlab stepped"
    _, etype, message, unchanged = ours
    assert unchanged, "a step that raises must change nothing"
    assert "incompatible function arguments" not in message
    # torch's own failure is a KeyError on a group or state entry, or (Adafactor) a
    # TypeError unpacking a missing tuple; optimlab names the missing entry in a KeyError
    assert etype is theirs[1] or (etype is KeyError and theirs[1] is TypeError), (theirs, ours)
