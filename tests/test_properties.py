"""Property tests (hypothesis) over shapes, dtypes, options, optimizers and backends.

* every backend agrees with optimlab's for-loop (which test_parity ties to torch's);
* a state_dict saved with torch.save and loaded with torch.load into a fresh
  optimizer is lossless: the values are exact, and the fresh optimizer continues in
  lockstep, bit for bit, with the original (after the same load: torch's load casts
  floating state such as NAdam's ``mu_product`` to the param's dtype);
* a step that raises (a sparse grad where the optimizer refuses them, in the last
  param group) leaves every param and state entry untouched.

Grads are assigned (a deterministic function of the step and the param). Options are
drawn from each spec's configurations (torch's database and ours). Bounded:
``max_examples`` small, ``deadline=None``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optimlab
from helpers import checkpoint, outcome, snapshot
from optim_db import backends, flags_for, implemented

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def _specs():
    # LBFGS computes grads through a closure; SparseAdam needs sparse grads
    return [s for s in implemented() if s.name not in ("LBFGS", "SparseAdam")]


def _usable(spec, backend):
    if backend == "triton" and not torch.cuda.is_available():
        from optimlab.kernels.triton import interpreting

        if not interpreting():
            return False
    return optimlab._dispatch._unavailable(spec.ours_cls.algorithm, backend) is None


@st.composite
def problems(draw, need=None):
    """(spec, config, dtype, list of shapes per group)."""
    specs = [s for s in _specs() if need is None or need(s)]
    spec = draw(st.sampled_from(specs))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    configs = [c for c in spec.configs(dtype) if not c.complex_param and c.problem is None]
    cfg = draw(st.sampled_from(configs))
    if spec.problem == "matrix":  # Muon: 2-D params
        shape = st.tuples(st.integers(1, 5), st.integers(1, 5))
    else:
        shape = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
    groups = draw(st.lists(st.lists(shape, min_size=1, max_size=3), min_size=1,
                           max_size=2 if spec.info.supports_param_groups else 1))
    return spec, cfg, dtype, groups


def _make(groups, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{"params": [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]}
            for shapes in groups]


def _params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def _set_grads(opt, step):
    for i, p in enumerate(_params(opt)):
        x = p.detach().double()
        p.grad = (torch.sin(1.1 * x + 0.5 * step + i) + 0.3 * x).to(p.dtype)


def _build(spec, cfg, dtype, groups, flags):
    kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cfg.kwargs.items()}
    return spec.ours_cls(_make(groups, dtype), **kwargs, **flags)


def _select(spec, backend, monkeypatch):
    if backend in ("forloop", "foreach"):
        return flags_for(spec, backend)
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    return {}


def _same(a, b, tol, exact_dtype=True):
    for x, y in zip(_params(a), _params(b), strict=True):
        torch.testing.assert_close(x.detach(), y.detach(), **tol)
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for pid in sb:
        assert list(sa[pid]) == list(sb[pid])
        for k, v in sb[pid].items():
            if torch.is_tensor(v):
                torch.testing.assert_close(sa[pid][k], v, **tol, check_dtype=exact_dtype)
            else:
                assert sa[pid][k] == pytest.approx(v, rel=1e-10), k


@SETTINGS
@given(problem=problems(), data=st.data())
def test_backends_agree_with_forloop(problem, data, monkeypatch):
    spec, cfg, dtype, groups = problem
    choices = [b for b in backends(spec) if b != "forloop" and _usable(spec, b)]
    if not choices:
        return
    backend = data.draw(st.sampled_from(choices))
    with monkeypatch.context() as m:
        ref = outcome(lambda: _build(spec, cfg, dtype, groups, flags_for(spec, "forloop")))
        ours = outcome(lambda: _build(spec, cfg, dtype, groups, _select(spec, backend, m)))
        if ref[0] == "raise":
            assert ours[0] == "raise" and ours[1:] == ref[1:], (ours, ref)
            return
        ref, ours = ref[1], ours[1]
        if {c.name for c in ours.backends()} != {backend}:
            return  # e.g. differentiable=True always runs the for-loop
        for step in range(3):
            _set_grads(ref, step)
            _set_grads(ours, step)
            r, o = outcome(ref.step), outcome(ours.step)
            if r[0] == "raise":
                assert o[0] == "raise" and o[1:] == r[1:], (o, r)
                return
            assert o[0] == "ok", o
            _same(ours, ref, TOL[dtype])


@SETTINGS
@given(problem=problems(), steps=st.integers(1, 3), data=st.data())
def test_state_dict_round_trip_is_lossless(problem, steps, data, monkeypatch):
    spec, cfg, dtype, groups = problem
    backend = data.draw(st.sampled_from([b for b in backends(spec) if _usable(spec, b)]))
    with monkeypatch.context() as m:
        flags = _select(spec, backend, m)
        first = outcome(lambda: _build(spec, cfg, dtype, groups, flags))
        if first[0] == "raise":
            return  # refused configurations: test_parity
        first = first[1]
        for step in range(steps):
            _set_grads(first, step)
            if outcome(first.step)[0] == "raise":
                return  # torch refuses it too (test_parity)
        saved = checkpoint(first)
        second = _build(spec, cfg, dtype, groups, flags)
        for p, q in zip(_params(second), _params(first)):
            p.data.copy_(q.detach())
        second.load_state_dict(saved)
        # the values are exact; dtypes follow torch's load policy (floating state entries
        # other than ``step`` are cast to the param's dtype: ASGD's float32 eta/mu become
        # float64 next to float64 params, in torch.optim too)
        _same(second, first, dict(rtol=0, atol=0), exact_dtype=False)
        # nothing lives outside the state_dict: a fresh optimizer that loaded it continues in
        # lockstep, bit for bit, with the original after the same load (same dtypes)
        first.load_state_dict(checkpoint(first))
        for step in range(steps, steps + 2):
            for opt in (first, second):
                _set_grads(opt, step)
                opt.step()
            _same(second, first, dict(rtol=0, atol=0))


def _refuses_sparse(spec):
    return spec.ours_cls.sparse_grad_error is not None


@SETTINGS
@given(problem=problems(need=_refuses_sparse), steps=st.integers(0, 2), data=st.data())
def test_a_step_that_raises_changes_nothing(problem, steps, data, monkeypatch):
    spec, cfg, dtype, groups = problem
    backend = data.draw(st.sampled_from([b for b in backends(spec) if _usable(spec, b)]))
    with monkeypatch.context() as m:
        opt = outcome(lambda: _build(spec, cfg, dtype, groups, _select(spec, backend, m)))
        if opt[0] == "raise":
            return
        opt = opt[1]
        for step in range(steps):
            _set_grads(opt, step)
            if outcome(opt.step)[0] == "raise":
                return
        _set_grads(opt, steps)
        params = _params(opt)
        # the very last param (in the last group) gets a sparse grad: the plan must refuse
        # it before the first group is updated
        params[-1].grad = params[-1].grad.to_sparse() if params[-1].dim() else None
        if params[-1].grad is None:
            return
        before = snapshot(opt, params)
        grads_before = [None if p.grad is None else p.grad.clone() for p in params]
        result = outcome(opt.step)
        assert result[0] == "raise" and result[1] is RuntimeError, result
        after_params, after_sd = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
        for a, b in zip(after_params, before[0], strict=True):
            assert torch.equal(a, b)
        assert after_sd["state"].keys() == before[1]["state"].keys()
        for pid, st_ in before[1]["state"].items():
            for k, v in st_.items():
                now = after_sd["state"][pid][k]
                assert torch.equal(now, v) if torch.is_tensor(v) else now == v, (pid, k)
        for p, g in zip(params[:-1], grads_before[:-1]):
            assert torch.equal(p.grad, g)  # grads are not touched either
