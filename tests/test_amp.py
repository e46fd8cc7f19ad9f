"""optimlab under ``torch.amp.GradScaler`` (CPU): the same numbers as torch.optim, skipped steps included.

The loop is the one users write::

    scaler.scale(loss).backward(); scaler.step(opt); scaler.update()

Two ways a step meets the scaler:

* *scaler unscales* (every backend): ``_step_supports_amp_scaling`` is False, so the
  scaler divides the grads by its scale, and skips ``opt.step()`` altogether when a
  grad is inf/NaN;
* *in kernel* (fused backends: cpp, triton): ``_step_supports_amp_scaling`` is True
  (``fused=True`` sets it), so the scaler hands ``opt.grad_scale``/``opt.found_inf``
  to ``step()`` and the kernel unscales and skips by itself. Where torch has no
  ``fused=`` flag for the optimizer (or the device's fused backend is another one),
  the backend is selected with ``OPTIMLAB_BACKEND`` and the attribute is set on the
  instance, exactly as ``fused=True`` sets it.

Every run is compared with torch.optim driven by its own GradScaler, after every
step: params, every state entry and the scale. torch's reference is the same
backend for forloop/foreach and the for-loop for fused backends (torch's own fused
optimizers take back the step counter of a skipped step; the for-loop never calls
``step()``: both leave the state as it was, which is what is checked). The scale is
a power of two, so unscaling is exact and float64 comparisons stay tight.

The skipped steps are not the first one: on a first step the for-loop creates no
state at all, while a fused optimizer creates it and then skips (torch's fused
optimizers do the same), so the two legitimately differ there.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import optimlab
from helpers import Run, assert_same, outcome, snapshot
from optim_db import Config, backends, flags_for, implemented, loss_fn

FUSED = optimlab._dispatch.FUSED_BACKENDS
NONFINITE = {2: float("inf"), 3: float("nan")}  # step index -> value planted in one grad
STEPS = 6


def _amp_specs():
    # LBFGS needs a closure, which GradScaler refuses (see test_lbfgs_refused).
    return [s for s in implemented() if s.name != "LBFGS"]


def _modes(spec, backend):
    if backend in FUSED:
        return ("scaler-unscales", "in-kernel")
    return ("scaler-unscales",)


def _triton_unusable(backend):
    if backend != "triton" or torch.cuda.is_available():
        return None
    from optimlab.kernels.triton import interpreting

    if not interpreting():
        return "the triton backend needs a CUDA GPU (none here) or TRITON_INTERPRET=1"
    return None


def _setup(spec, backend, mode, cfg, dtype, monkeypatch):
    """(our Run or an outcome, torch's Run or an outcome) for one case."""
    if backend in ("forloop", "foreach"):
        ours_flags = torch_flags = flags_for(spec, backend)
    else:
        torch_flags = {}  # torch runs its for-loop on CPU by default
        ours_flags = {}
        # (torch's fused=True refuses sparse grads, as optimlab's does: those configs
        # reach the cpp backend through OPTIMLAB_BACKEND, which sends them to the for-loop)
        natural_fused = (
            mode == "in-kernel" and backend == "cpp" and "fused" in spec.info.supported_impls
            and (cfg.problem or spec.problem) != "sparse"
        )
        if natural_fused:
            ours_flags = {"fused": True}
        else:
            monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    ref = outcome(lambda: Run(spec, spec.torch_cls, cfg, dtype, torch_flags))
    ours = outcome(lambda: Run(spec, spec.ours_cls, cfg, dtype, ours_flags))
    return ours, ref


def _plant(params, value):
    """Put ``value`` into one element of the last param's grad (a param of the last group)."""
    for p in reversed(params):
        if p.grad is None:
            continue
        g = p.grad._values() if p.grad.is_sparse else p.grad
        if g.numel():
            g.reshape(-1)[0] = value if not g.is_complex() else complex(value, 0)
            return
    raise AssertionError("no grad to plant a non-finite value in")


def _assert_same(ours, ref, dtype):
    """``assert_same``, except for the ``fused`` flag that selected our fused backend."""
    sd = ours.opt.state_dict()
    for go, gr in zip(sd["param_groups"], ref.opt.state_dict()["param_groups"]):
        if go.get("fused") and not gr.get("fused"):
            go["fused"] = gr["fused"]
    assert_same(SimpleNamespace(params=ours.params, opt=SimpleNamespace(state_dict=lambda: sd)), ref, dtype)


def _identical(a, b) -> bool:
    if not torch.is_tensor(b):
        return a == b
    if b.is_sparse:
        a, b = a.to_dense(), b.to_dense()
    return a.dtype == b.dtype and torch.equal(a, b)


def _amp_step(run, scaler, i, unscale_and_clip=False):
    run.opt.zero_grad()
    loss = loss_fn(run.kind, run.params)
    scaler.scale(loss).backward()
    if i in NONFINITE:
        _plant(run.params, NONFINITE[i])
    if unscale_and_clip:
        scaler.unscale_(run.opt)
        torch.nn.utils.clip_grad_norm_([p for p in run.params if not p.grad.is_sparse], 1.0)
    scaler.step(run.opt)
    scaler.update()


def _cases():
    for spec in _amp_specs():
        for backend in backends(spec):
            for mode in _modes(spec, backend):
                for cfg in spec.configs(torch.float64):
                    yield pytest.param(
                        spec, backend, mode, cfg, id=f"{spec.name}-{backend}-{mode}-{cfg.desc}"
                    )


def _run_against_torch(spec, backend, mode, cfg, dtype, monkeypatch, unscale_and_clip=False):
    if why := _triton_unusable(backend):
        pytest.skip(why)
    ours, ref = _setup(spec, backend, mode, cfg, dtype, monkeypatch)
    if ref[0] == "raise":  # torch refuses this configuration: covered by test_parity
        pytest.skip(f"torch refuses this configuration: {ref[2]}")
    assert ours[0] == "ok", ours
    ours, ref = ours[1], ref[1]
    chosen = {c.name for c in ours.opt.backends()}
    if chosen != {backend}:
        # e.g. differentiable=True always runs the for-loop, whatever OPTIMLAB_BACKEND says
        assert backend in FUSED, chosen
        pytest.skip(f"this configuration runs on {chosen}, not {backend}")
    if mode == "in-kernel":
        ours.opt._step_supports_amp_scaling = True  # what fused=True sets (a no-op if it did)
    ref_scaler, our_scaler = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
    for i in range(STEPS):
        before = snapshot(ours.opt, ours.params)
        r = outcome(lambda: _amp_step(ref, ref_scaler, i, unscale_and_clip))
        o = outcome(lambda: _amp_step(ours, our_scaler, i, unscale_and_clip))
        if r[0] == "raise":
            assert o[0] == "raise" and o[1:] == r[1:], (o, r)
            return
        assert o[0] == "ok", o
        assert our_scaler.get_scale() == ref_scaler.get_scale(), i
        _assert_same(ours, ref, dtype)
        if i in NONFINITE:  # skipped: nothing moved, not even a step counter
            prev_params, prev_sd = before
            for a, b in zip(ours.params, prev_params):
                assert _identical(a.detach(), b), f"step {i} was not skipped"
            after_sd = ours.opt.state_dict()["state"]
            for pid, st in prev_sd["state"].items():
                for key, value in st.items():
                    now = after_sd[pid][key]
                    assert _identical(now, value), f"step {i} changed state[{pid}][{key}]"
    assert all(torch.isfinite(p.detach()).all() for p in ours.params)


@pytest.mark.parametrize("spec,backend,mode,cfg", _cases())
def test_grad_scaler_matches_torch(spec, backend, mode, cfg, monkeypatch):
    _run_against_torch(spec, backend, mode, cfg, torch.float64, monkeypatch)


def _default_cases():
    for spec in _amp_specs():
        for backend in backends(spec):
            for mode in _modes(spec, backend):
                yield pytest.param(spec, backend, mode, id=f"{spec.name}-{backend}-{mode}")


@pytest.mark.parametrize("spec,backend,mode", _default_cases())
def test_unscale_then_clip(spec, backend, mode, monkeypatch):
    """``scaler.unscale_(opt)`` before clipping: a fused step must not unscale a second time."""
    _run_against_torch(spec, backend, mode, Config("default", {}), torch.float64, monkeypatch,
                       unscale_and_clip=True)


@pytest.mark.parametrize("spec,backend,mode", _default_cases())
def test_float32_default(spec, backend, mode, monkeypatch):
    _run_against_torch(spec, backend, mode, Config("default", {}), torch.float32, monkeypatch)


def _fused_flag_specs():
    return [pytest.param(s, id=s.name) for s in _amp_specs() if "fused" in s.info.supported_impls]


@pytest.mark.parametrize("spec", _fused_flag_specs())
def test_fused_flag_asks_for_in_kernel_scaling(spec):
    """Like torch, ``fused=True`` opts into GradScaler's in-kernel hand-off; nothing else does."""
    params = Run(spec, spec.torch_cls, Config("default", {}), torch.float32, {}).params
    for flags, expected in (({"fused": True}, True), ({}, False), (flags_for(spec, "foreach"), False)):
        theirs = outcome(lambda: spec.torch_cls(params, **flags))
        ours = outcome(lambda: spec.ours_cls(params, **flags))
        assert ours[0] == theirs[0], (ours, theirs)
        if ours[0] == "ok":
            assert getattr(ours[1], "_step_supports_amp_scaling", False) is expected
            assert getattr(theirs[1], "_step_supports_amp_scaling", False) is expected


def _autocast_model(kind):
    torch.manual_seed(0)
    bias = kind != "matrix"  # Muon takes 2-D params only
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8, bias=bias), torch.nn.GELU(), torch.nn.Linear(8, 1, bias=bias)
    )


def _autocast_cases():
    for spec in _amp_specs():
        for backend in backends(spec):
            yield pytest.param(spec, backend, id=f"{spec.name}-{backend}")


@pytest.mark.parametrize("spec,backend", _autocast_cases())
def test_autocast_bf16_training(spec, backend, monkeypatch):
    """A real mixed-precision loop: float32 master weights, bfloat16 autocast forward, default scaler."""
    if why := _triton_unusable(backend):
        pytest.skip(why)
    if spec.name == "SparseAdam":
        pytest.skip("SparseAdam takes only sparse grads; the dense Linear head of this model has dense grads")
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 6, generator=gen) for _ in range(STEPS)]
    ys = [torch.randn(5, 1, generator=gen) for _ in range(STEPS)]
    ours_flags, torch_flags = flags_for(spec, backend), flags_for(spec, backend)
    if backend in FUSED:
        ours_flags, torch_flags = {}, {}
        monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    runs = []
    for cls, flags in ((spec.torch_cls, torch_flags), (spec.ours_cls, ours_flags)):
        model = _autocast_model(spec.problem)
        opt = cls(model.parameters(), **flags)
        scaler = torch.amp.GradScaler("cpu")
        for i in range(STEPS):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(xs[i])
                loss = torch.nn.functional.mse_loss(out.float(), ys[i]) * (float("inf") if i == 3 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        runs.append((model, opt, scaler))
    (tm, topt, tsc), (om, oopt, osc) = runs
    assert {c.name for c in oopt.backends()} == {backend}
    assert osc.get_scale() == tsc.get_scale() == 2.0**15  # one skipped step halved it
    for a, b in zip(om.parameters(), tm.parameters()):
        assert a.dtype == torch.float32
        # float32 master weights; the bf16 forward is identical in both runs, so only the
        # update's float32 rounding (foreach vs for-loop order of operations) differs
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ts, os_ = topt.state_dict()["state"], oopt.state_dict()["state"]
    assert ts.keys() == os_.keys()
    for pid in ts:
        for key, value in ts[pid].items():
            if torch.is_tensor(value):
                torch.testing.assert_close(os_[pid][key], value, rtol=1e-5, atol=1e-6)
            else:
                assert os_[pid][key] == value


@pytest.mark.parametrize("cls", [torch.optim.LBFGS, optimlab.LBFGS], ids=["torch", "optimlab"])
def test_lbfgs_refused(cls):
    """GradScaler cannot drive LBFGS: it refuses the closure LBFGS needs (torch and optimlab alike)."""
    p = torch.nn.Parameter(torch.randn(3))
    opt = cls([p])
    scaler = torch.amp.GradScaler("cpu")

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        scaler.scale(loss).backward()
        return loss

    closure()
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=closure)
