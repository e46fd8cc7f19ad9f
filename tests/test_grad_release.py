"""Gradient release (optimlab.gradient_release): updates during backward equal normal steps."""

import pytest
import torch

import optimlab
from optim_db import backends, implemented

SPECS = [s for s in implemented() if s.name not in ("LBFGS",)]
KWARGS = {"SGD": dict(lr=0.05, momentum=0.9), "SparseAdam": dict(lr=0.01)}


def _model(name, dtype):
    torch.manual_seed(0)
    if name == "SparseAdam":
        return torch.nn.Embedding(10, 4, sparse=True).to(dtype)
    if name == "Muon":  # 2-D params only
        return torch.nn.Sequential(torch.nn.Linear(4, 6, bias=False), torch.nn.Tanh(),
                                   torch.nn.Linear(6, 3, bias=False)).to(dtype)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(dtype)


def _train(name, backend, release, monkeypatch, dtype=torch.float64, steps=4, scheduler=True):
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    model = _model(name, dtype)
    opt = getattr(optimlab, name)(model.parameters(), **KWARGS.get(name, {}))
    sched = optimlab.lr_scheduler.StepLR(opt, 2, gamma=0.5) if scheduler else None
    handle = optimlab.gradient_release(opt) if release else None
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        if name == "SparseAdam":
            loss = model(torch.randint(0, 10, (5,), generator=gen)).sin().sum()
        else:
            loss = model(torch.randn(5, 4, generator=gen, dtype=dtype)).sin().sum()
        loss.backward()
        if release:  # every grad was consumed and freed during backward
            assert all(p.grad is None for p in model.parameters())
        opt.step()
        opt.zero_grad()
        if sched:
            sched.step()
    if handle:
        handle.remove()
    return model, opt


@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name) for s in SPECS])
def test_release_equals_normal_steps(spec, monkeypatch):
    for backend in backends(spec):
        ref_model, ref_opt = _train(spec.name, backend, False, monkeypatch)
        model, opt = _train(spec.name, backend, True, monkeypatch)
        for a, b in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"{backend}")
        sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
        for pid, st in ref_sd["state"].items():
            for k, v in st.items():
                got = sd["state"][pid][k]
                if torch.is_tensor(v):
                    torch.testing.assert_close(got.to_dense() if got.is_sparse else got,
                                               v.to_dense() if v.is_sparse else v, rtol=1e-12, atol=1e-14)
                else:
                    assert got == v


def test_checkpoint_and_resume_under_release(monkeypatch):
    model, opt = _train("AdamW", "forloop", True, monkeypatch, steps=2, scheduler=False)
    fresh = optimlab.AdamW(model.parameters())
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_remove_restores_normal_steps(monkeypatch):
    model = _model("Adam", torch.float64)
    opt = optimlab.Adam(model.parameters())
    handle = optimlab.gradient_release(opt)
    handle.remove()
    model(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    optimlab.gradient_release(opt).remove()  # can be started again


def test_unsupported_uses_raise_before_anything_changes():
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="does not support LBFGS"):
        optimlab.gradient_release(optimlab.LBFGS([p]))
    with pytest.raises(ValueError, match="differentiable=True"):
        optimlab.gradient_release(optimlab.Adam([p], differentiable=True))
    with pytest.raises(TypeError, match="needs an optimlab optimizer"):
        optimlab.gradient_release(torch.optim.Adam([p]))
    opt = optimlab.SGD([p], lr=0.1)
    optimlab.gradient_release(opt)
    with pytest.raises(RuntimeError, match="already active"):
        optimlab.gradient_release(opt)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="step\\(closure\\) is not supported under gradient release"):
        opt.step(lambda: (p * p).sum())
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("option", [{"kahan_sum": True}, {"stochastic_rounding": True, "rounding_seed": 3},
                                    {"state_dtype": torch.float32}])
def test_release_with_low_precision_options_equals_normal_steps(option):
    """bf16 training with a low-precision option: updating each param during backward gives
    the bits (params and every state entry) of normal steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(torch.bfloat16)
    released = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(torch.bfloat16)
    released.load_state_dict(model.state_dict())
    opt = optimlab.AdamW(model.parameters(), lr=1e-3, **option)
    opt_r = optimlab.AdamW(released.parameters(), lr=1e-3, **option)
    optimlab.gradient_release(opt_r)
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    for _ in range(3):
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        released(x).square().sum().backward()
    for p, q in zip(model.parameters(), released.parameters()):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == opt_r.state[q].keys()
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt_r.state[q][k]), k
