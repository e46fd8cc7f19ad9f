"""ASGD on every backend: checkpoints move between optimlab and torch.optim both ways, and
NaN/inf grads give the for-loop reference's result.

Checkpoints: one library's optimizer runs a few steps and is checkpointed; the checkpoint
is resumed in the same library (the control) and in the other one, and both continue in
lockstep. ``load_state_dict`` casts ``eta`` and ``mu`` to the params' dtype (float64
here), so the resumed optimizers store every later ``eta``/``mu`` in float64 state: what
they store there must be what torch stores (its for-loop rounds them to the default dtype
first, ``torch.as_tensor`` of a Python float), or the runs drift apart.

NaN/inf grads: grads that do not depend on the params, so that a param driven to +-inf
stays infinite for the following steps (torch's foreach computes ``p - eta * (g + lambd *
p)`` and ``ax + mu * (p - ax)`` where the for-loop computes ``p * (1 - lambd * eta) - eta
* g`` and copies ``ax = p`` while ``mu == 1``: an infinite param gives NaN there, an
infinite param and average there). Every backend is compared with torch's for-loop.
"""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import FUSED_F32_TOL, Run, assert_same, checkpoint
from optim_db import SPECS, Config, backends

SPEC = SPECS["ASGD"]
T = torch.tensor

# float64: the resumed runs agree to the last bits (each backend is bitwise or FMA-close to
# its reference); float32 as the parity tests.
TIGHT = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-5, atol=1e-6)}

CONFIGS = [
    Config("lr, lambd", dict(lr=0.05, lambd=0.3)),
    Config("lr, lambd, t0, alpha (mu < 1)", dict(lr=0.05, lambd=0.3, t0=1, alpha=0.5)),
    Config("t0, weight_decay, maximize", dict(lr=0.02, lambd=1e-3, t0=2, weight_decay=0.1, maximize=True)),
    Config("float64 Tensor lr, lambd, t0", dict(lr=T(0.05, dtype=torch.float64), lambd=0.3, t0=1)),
]


def _skip_unavailable(backend):
    if backend not in backends(SPEC):
        pytest.skip(f"the {backend} backend cannot run here")
    if backend == "triton" and not torch.cuda.is_available():
        from optimlab.kernels.triton import interpreting

        if not interpreting():
            pytest.skip("the triton backend needs a CUDA GPU (none here) or TRITON_INTERPRET=1")


def _select(backend, monkeypatch):
    """(optimlab flags, torch flags) running ``backend`` against torch's same backend
    (forloop/foreach) or its for-loop (the fused backends, chosen by the environment: an
    explicit ``foreach=False`` in a loaded checkpoint would override it)."""
    if backend in ("forloop", "foreach"):
        flags = {"foreach": backend == "foreach"}
        return flags, flags
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    return {}, {}


def _tol(backend, dtype):
    return FUSED_F32_TOL if dtype == torch.float32 and backend in ("cpp", "triton") else TIGHT[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.desc for c in CONFIGS])
@pytest.mark.parametrize("direction", ["optimlab->torch", "torch->optimlab"])
@pytest.mark.parametrize("backend", ["forloop", "foreach", "cpp", "triton"])
def test_checkpoint_interop(backend, direction, cfg, dtype, monkeypatch):
    _skip_unavailable(backend)
    ours_flags, torch_flags = _select(backend, monkeypatch)
    ours = (SPEC.ours_cls, ours_flags)
    theirs = (SPEC.torch_cls, torch_flags)
    src, dst = (ours, theirs) if direction == "optimlab->torch" else (theirs, ours)

    first = Run(SPEC, src[0], cfg, dtype, src[1])
    first.steps(3)
    ckpt = checkpoint(first.opt)
    resumed = []
    for cls, flags in (src, dst):
        params = [torch.nn.Parameter(p.detach().clone()) for p in first.params]
        run = Run(SPEC, cls, cfg, dtype, flags, params=params)
        run.opt.load_state_dict(copy.deepcopy(ckpt))
        resumed.append(run)
    control, other = resumed
    for run in (first, control, other):
        if isinstance(run.opt, SPEC.ours_cls):
            assert {c.name for c in run.opt.backends()} == {backend}
    tol = _tol(backend, dtype)
    assert_same(other, control, dtype, tol)
    for _ in range(4):
        control.steps(1)
        other.steps(1)
        assert_same(other, control, dtype, tol)


# ---- NaN/inf grads -------------------------------------------------------------------------
SHAPES = [(4, 3), (5,), (2, 3), ()]
# step -> [(param, flat index, value)]: +inf drives a param to -inf (and a maximized one to
# +inf), -inf the other way; NaN poisons one element.
PLANTED = {
    1: [(0, 0, float("inf")), (1, 2, float("-inf"))],
    2: [(2, 1, float("nan")), (3, 0, float("inf"))],
    4: [(0, 5, float("-inf"))],
}
NONFINITE_CONFIGS = [
    Config("default (mu == 1)", {}),
    Config("lr, lambd", dict(lr=0.05, lambd=0.3)),
    Config("lambd=0", dict(lambd=0.0)),
    Config("t0=1 (mu < 1)", dict(t0=1, lr=0.05)),
    Config("weight_decay", dict(weight_decay=0.1)),
    Config("maximize, t0", dict(maximize=True, t0=2)),
]


def _grad(step, i, shape, dtype):
    n = max(1, torch.Size(shape).numel())
    g = torch.sin(torch.arange(n, dtype=torch.float64) * 0.9 + 0.7 * step + i).to(dtype)
    for j, k, value in PLANTED.get(step, ()):
        if j == i:
            g[k] = value
    return g.reshape(shape)


def _nonfinite_run(cls, flags, kwargs, dtype, steps):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)) for s in SHAPES]
    opt = cls(params, **kwargs, **flags)
    history = []
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = _grad(step, i, p.shape, dtype)
        opt.step()
        history.append(copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()["state"])))
    return opt, history


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("cfg", NONFINITE_CONFIGS, ids=[c.desc for c in NONFINITE_CONFIGS])
@pytest.mark.parametrize("backend", ["forloop", "foreach", "cpp", "triton"])
def test_nonfinite_grads_match_torch_forloop(backend, cfg, dtype, monkeypatch):
    _skip_unavailable(backend)
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    steps = 6
    ours, got = _nonfinite_run(SPEC.ours_cls, {}, cfg.kwargs, dtype, steps)
    assert {c.name for c in ours.backends()} == {backend}
    _, want = _nonfinite_run(SPEC.torch_cls, {"foreach": False}, cfg.kwargs, dtype, steps)
    tol = dict(_tol(backend, dtype))
    if backend == "foreach":
        # the foreach eta is torch's foreach eta, computed on the float32 step tensor: it can
        # be one float32 ulp off the for-loop's (rounded from a double)
        tol = dict(rtol=max(tol["rtol"], 1e-6), atol=max(tol["atol"], 1e-7))
    assert any(not torch.isfinite(p).all() for p in want[-1][0]), "the scenario must reach non-finite params"
    for step, ((p_got, s_got), (p_want, s_want)) in enumerate(zip(got, want)):
        for k, (a, b) in enumerate(zip(p_got, p_want)):
            torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=lambda m: f"step {step} param {k}: {m}")
        for pid, entries in s_want.items():
            for key, b in entries.items():
                a = s_got[pid][key]
                torch.testing.assert_close(a, b, equal_nan=True, **tol,
                                           msg=lambda m: f"step {step} state[{pid}][{key}]: {m}")
