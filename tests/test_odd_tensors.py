"""Odd tensors on every backend of every optimizer: the same results as torch.optim.

Scenarios: zero-size and 0-dim params, non-contiguous views, channels_last 4-D params,
grads that are None on some steps, mixed dtypes in one group, NaN/inf grads, params
added later with ``add_param_group`` and ``zero_grad(set_to_none=False)``.

Grads are assigned directly: a deterministic function of the step, the param's index
and the param's current value (so a divergence in one step shows in the next grads).
After every step every param, every state entry (value, dtype, shape and strides) and
every param-group option is compared with torch.optim (its same backend for forloop
and foreach, its for-loop for the fused backends); when torch raises,
optimlab must raise the same exception with the same message.

Muon takes 2-D params only: it gets 2-D variants (channels_last and 0-dim do not
apply). SparseAdam takes sparse grads only: it gets sparse variants of the scenarios
that make sense for embedding tables. LBFGS is left out: it computes its own grads
from a closure (its single-group, dense-only cases are in test_parity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from helpers import outcome
from optim_db import Config, backends, flags_for, implemented

STEPS = 4
CL = torch.channels_last

# Tolerances per dtype. float64/float32: the foreach/fused backends round differently
# from the for-loop only in the last bits. bfloat16 (8 bits of mantissa) and float16
# (11 bits): a backend may evaluate the update in float32 and round once (foreach,
# fused) where the for-loop rounds after each op, so results differ by a few ulps of
# the half type per step, compounding over the steps.
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}
# state entries that are hyperparameters of the backend choice, not of the math
_FLAG_KEYS = ("foreach", "fused")


# ---- grads -------------------------------------------------------------------------------
def smooth_grad(step: int, i: int, p: torch.Tensor) -> torch.Tensor:
    """A deterministic grad for param ``i`` at ``step``, computed in float64 from the param."""
    x = p.detach().double()
    g = torch.sin(x * 1.3 + 0.7 * step + i) + 0.2 * x + 0.05 * (i + 1)
    return g.to(p.dtype)


def sparse_grad(step: int, i: int, p: torch.Tensor, duplicates: bool = False, empty: bool = False):
    rows = p.shape[0]
    if empty:
        idx = torch.zeros(1, 0, dtype=torch.long)
    else:
        picked = [(step + i) % rows, (2 * step + 1) % rows]
        if duplicates:
            picked += [(step + i) % rows]  # uncoalesced: a row appears twice
        idx = torch.tensor([picked])
    x = p.detach().double()[idx[0]] if idx.numel() else p.detach().double()[:0]
    vals = torch.cos(x * 0.9 + step) + 0.1 * (i + 1)
    return torch.sparse_coo_tensor(idx, vals.to(p.dtype), p.shape)


# ---- scenarios ---------------------------------------------------------------------------
@dataclass
class Scenario:
    """``groups()`` makes fresh param groups; ``before_step(opt, step)`` sets the grads."""

    groups: Callable[[], list[dict]]
    before_step: Callable[[torch.optim.Optimizer, int], None]


def _param(t: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(t)  # keeps t's strides (a view over a transposed tensor stays one)


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _all_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def _assign(opt, step, grad=smooth_grad, skip=lambda step, i: False, layout=None):
    for i, p in enumerate(_all_params(opt)):
        if skip(step, i):
            p.grad = None
            continue
        g = grad(step, i, p)
        if layout is not None:
            g = layout(step, g)
        p.grad = g


def _plain(params):
    return Scenario(lambda: [{"params": params()}], lambda opt, s: _assign(opt, s))


def zero_size(kind):
    shapes = {"dense": [(0,), (2, 0, 3), (3, 2)], "matrix": [(0, 3), (3, 0), (3, 2)]}[kind]
    return _plain(lambda: [_param(_randn(*s, seed=k)) for k, s in enumerate(shapes)])


def zero_dim(kind):
    if kind == "matrix":
        return "Muon takes 2-D params only"
    return _plain(lambda: [_param(_randn(seed=1)), _param(_randn(seed=2)), _param(_randn(3, seed=3))])


def _noncontig_params(kind):
    ps = [
        _param(_randn(3, 4, seed=1).t()),  # (4, 3), transposed strides
        _param(_randn(6, 7, seed=2)[1::2, 2::2]),  # (3, 3) view, strides (14, 2), offset
    ]
    if kind == "dense":
        ps.append(_param(_randn(4, 6, seed=3)[:, 1]))  # 1-D, stride 6
    for p in ps:
        assert not p.is_contiguous()
    return ps


def _transposed_on_odd(step, g):
    # odd steps: the grad itself is non-contiguous too (same values, transposed layout)
    return g.t().contiguous().t() if step % 2 and g.dim() == 2 else g


def noncontiguous(kind):
    return Scenario(
        lambda: [{"params": _noncontig_params(kind)}],
        lambda opt, s: _assign(opt, s, layout=_transposed_on_odd),
    )


def channels_last(kind):
    if kind == "matrix":
        return "Muon takes 2-D params only"

    def params():
        ps = [_param(_randn(2, 3, 4, 5, seed=1).to(memory_format=CL)),
              _param(_randn(1, 2, 3, 3, seed=2).to(memory_format=CL)),
              _param(_randn(3, seed=3))]
        assert ps[0].is_contiguous(memory_format=CL) and not ps[0].is_contiguous()
        return ps

    def layout(step, g):  # grads channels_last on even steps, contiguous on odd ones
        return g.contiguous() if step % 2 or g.dim() != 4 else g.to(memory_format=CL)

    return Scenario(lambda: [{"params": params()}], lambda opt, s: _assign(opt, s, layout=layout))


def _basic_shapes(kind):
    return {"dense": [(4, 3), (5,), (2, 3, 2), ()], "matrix": [(4, 3), (3, 5), (2, 2)]}[kind]


def grad_none_sometimes(kind):
    shapes = _basic_shapes(kind)
    # param 0 has no grad on its first step: its state is created one step later
    skip = lambda step, i: (step + i) % 3 == 0  # noqa: E731
    return Scenario(
        lambda: [{"params": [_param(_randn(*s, seed=k)) for k, s in enumerate(shapes)]}],
        lambda opt, s: _assign(opt, s, skip=skip),
    )


def mixed_dtypes(kind):
    dtypes = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
    shapes = {"dense": [(4, 3), (5,), (2, 3), (3,)], "matrix": [(4, 3), (3, 2), (2, 3), (3, 3)]}[kind]
    return _plain(lambda: [_param(_randn(*s, seed=k).to(d)) for k, (s, d) in enumerate(zip(shapes, dtypes))])


def nan_inf_grads(kind):
    shapes = _basic_shapes(kind)
    planted = {1: (0, float("nan")), 2: (1, float("inf")), 3: (2, float("-inf"))}

    def grad(step, i, p):
        g = smooth_grad(step, i, p)
        if step in planted and planted[step][0] == i:
            g.reshape(-1)[0] = planted[step][1]
        return g

    return Scenario(
        lambda: [{"params": [_param(_randn(*s, seed=k)) for k, s in enumerate(shapes)]}],
        lambda opt, s: _assign(opt, s, grad=grad),
    )


def add_param_group_later(kind):
    shapes = _basic_shapes(kind)

    def before(opt, step):
        if step == 2:  # two steps in, a new group with its own lr
            opt.add_param_group({"params": [_param(_randn(*s, seed=10 + k)) for k, s in enumerate(shapes[:2])],
                                 "lr": 0.02})
        _assign(opt, step)

    return Scenario(lambda: [{"params": [_param(_randn(*s, seed=k)) for k, s in enumerate(shapes[2:])]}], before)


def zero_grad_keep(kind):
    shapes = _basic_shapes(kind)

    def before(opt, step):
        opt.zero_grad(set_to_none=False)  # grads stay allocated, zeroed in place
        for i, p in enumerate(_all_params(opt)):
            if step == 0 or (step + i) % 3:
                g = smooth_grad(step, i, p)
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
            # else: the zeroed grad (not None) is stepped on

    return Scenario(lambda: [{"params": [_param(_randn(*s, seed=k)) for k, s in enumerate(shapes)]}], before)


# SparseAdam: embedding tables with sparse grads
def _tables():
    return [_param(_randn(6, 3, seed=1)), _param(_randn(5, 4, seed=2)), _param(_randn(4, 2, seed=3))]


def sparse_grad_none_sometimes(kind):
    return Scenario(lambda: [{"params": _tables()}],
                    lambda opt, s: _assign(opt, s, grad=sparse_grad, skip=lambda s, i: (s + i) % 3 == 0))


def sparse_empty_and_duplicates(kind):
    def grad(step, i, p):
        return sparse_grad(step, i, p, duplicates=step % 2 == 0, empty=(step == 1 and i == 0))

    return Scenario(lambda: [{"params": _tables()}], lambda opt, s: _assign(opt, s, grad=grad))


def sparse_add_param_group_later(kind):
    def before(opt, step):
        if step == 2:
            opt.add_param_group({"params": [_param(_randn(3, 5, seed=9))], "lr": 0.02})
        _assign(opt, step, grad=sparse_grad)

    return Scenario(lambda: [{"params": _tables()[:2]}], before)


DENSE_SCENARIOS = (zero_size, zero_dim, noncontiguous, channels_last, grad_none_sometimes,
                   mixed_dtypes, nan_inf_grads, add_param_group_later, zero_grad_keep)
SPARSE_SCENARIOS = (sparse_grad_none_sometimes, sparse_empty_and_duplicates, sparse_add_param_group_later)


# ---- comparison --------------------------------------------------------------------------
def _close(a, b, where):
    if not torch.is_tensor(b):
        if isinstance(b, float) and math.isnan(b):
            assert isinstance(a, float) and math.isnan(a), f"{where}: {a} != nan"
        elif isinstance(b, float):
            assert abs(a - b) <= 1e-12 + 1e-10 * abs(b), f"{where}: {a} != {b}"
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"
        return
    assert torch.is_tensor(a), f"{where}: expected a tensor, got {type(a)}"
    assert (a.dtype, a.shape, a.layout) == (b.dtype, b.shape, b.layout), (
        f"{where}: {a.dtype} {tuple(a.shape)} {a.layout} != {b.dtype} {tuple(b.shape)} {b.layout}")
    if b.is_sparse:
        a, b = a.to_dense(), b.to_dense()
    elif b.numel() > 1:
        assert a.stride() == b.stride(), f"{where}: strides {a.stride()} != {b.stride()}"
    tol = TOL.get(b.dtype, TOL[torch.float64])
    torch.testing.assert_close(a, b, equal_nan=True, **tol, msg=lambda m: f"{where}: {m}")


def _compare(ours, ref):
    po, pr = _all_params(ours), _all_params(ref)
    assert len(po) == len(pr)
    for k, (a, b) in enumerate(zip(po, pr)):
        _close(a.detach(), b.detach(), f"param {k}")
    so, sr = ours.state_dict(), ref.state_dict()
    assert so["state"].keys() == sr["state"].keys(), "state has entries for different params"
    for pid, st in sr["state"].items():
        assert list(so["state"][pid]) == list(st), f"state {pid} keys"
        for key, value in st.items():
            _close(so["state"][pid][key], value, f"state[{pid}][{key}]")
    assert len(so["param_groups"]) == len(sr["param_groups"])
    for go, gr in zip(so["param_groups"], sr["param_groups"]):
        assert go.keys() == gr.keys(), f"param group keys {set(go) ^ set(gr)}"
        for key in gr:
            if key not in _FLAG_KEYS:  # ours selects its backend; torch runs its for-loop
                _close(go[key], gr[key], f"param_group[{key}]")


# ---- cases -------------------------------------------------------------------------------
def _busy_config(spec) -> Config | None:
    """The spec's torch configuration with the most options (plain numbers only)."""
    usable = [
        c for c in spec.configs(torch.float64)
        if c.desc.startswith("torch:") and not c.complex_param and c.problem is None
        and not any(k in c.kwargs for k in ("differentiable", "capturable", "foreach", "fused"))
        and not any(torch.is_tensor(v) or isinstance(v, (tuple, list)) and any(map(torch.is_tensor, v))
                    for v in c.kwargs.values())
    ]
    return max(usable, key=lambda c: len(c.kwargs), default=None)


def _cases():
    for spec in implemented():
        if spec.name == "LBFGS":
            continue  # computes its own grads through a closure
        scenarios = SPARSE_SCENARIOS if spec.problem == "sparse" else DENSE_SCENARIOS
        configs = [Config("default", {})]
        busy = _busy_config(spec)
        if busy is not None and busy.kwargs:
            configs.append(busy)
        for backend in backends(spec):
            for scenario in scenarios:
                for cfg in configs:
                    yield pytest.param(spec, backend, scenario, cfg,
                                       id=f"{spec.name}-{backend}-{scenario.__name__}-{cfg.desc}")


@pytest.mark.parametrize("spec,backend,scenario,cfg", _cases())
def test_odd_tensors_match_torch_forloop(spec, backend, scenario, cfg, monkeypatch):
    kind = "matrix" if spec.problem == "matrix" else spec.problem
    sc = scenario(kind if kind != "sparse" else "dense")
    if isinstance(sc, str):
        pytest.skip(sc)
    if backend == "triton" and not torch.cuda.is_available():
        from optimlab.kernels.triton import interpreting

        if not interpreting():
            pytest.skip("the triton backend needs a CUDA GPU (none here) or TRITON_INTERPRET=1")
    ours_flags = flags_for(spec, backend) if backend in ("forloop", "foreach") else {}
    if backend not in ("forloop", "foreach"):
        monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    # torch's foreach is the reference of ours (torch's own foreach and for-loop differ in the
    # last bits, e.g. ASGD's float32 eta); fused backends are held to torch's for-loop.
    torch_flags = flags_for(spec, backend if backend in ("forloop", "foreach") else "forloop")

    ref_groups, our_groups = sc.groups(), sc.groups()  # outside outcome(): setup must not raise
    ref = outcome(lambda: spec.torch_cls(ref_groups, **cfg.kwargs, **torch_flags))
    ours = outcome(lambda: spec.ours_cls(our_groups, **cfg.kwargs, **ours_flags))
    if ref[0] == "raise":
        assert ours[0] == "raise" and ours[1:] == ref[1:], (ours, ref)
        return
    assert ours[0] == "ok", ours
    ref, ours = ref[1], ours[1]
    for step in range(STEPS):
        sc.before_step(ref, step)
        sc.before_step(ours, step)
        r = outcome(ref.step)
        o = outcome(ours.step)
        if r[0] == "raise":
            assert o[0] == "raise" and o[1:] == r[1:], (step, o, r)
            return
        assert o[0] == "ok", (step, o)
        assert {c.name for c in ours.backends()} == {backend}, ours.backends()
        _compare(ours, ref)
