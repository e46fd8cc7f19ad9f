"""Opt-in low-precision updates (``optimlab.low_precision``): kahan_sum, stochastic_rounding,
state_dtype and rounding_seed, for the 11 elementwise optimizers on every backend that runs
here (Triton in its CPU interpreter).

The Kahan and stochastic writes are checked bit for bit against the rule written out here
by hand, on the float32 result of the same backend's update (a float32 twin optimizer fed
the rounded state every step); Philox against Triton's ``tl.philox`` itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import optimlab
from optimlab import _dispatch
from optimlab import low_precision as lp

NAMES = ["SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam",
         "RMSprop", "Rprop"]
# every state entry in play (momentum, amsgrad, centered, weight decay, ASGD's averaging)
KWARGS = {
    "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.1),
    "Adam": dict(lr=0.01, weight_decay=0.1, amsgrad=True),
    "AdamW": dict(lr=0.01),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, weight_decay=0.1),
    "Adadelta": dict(lr=0.5, weight_decay=0.1),
    "Adamax": dict(lr=0.01, weight_decay=0.1),
    "ASGD": dict(lr=0.05, t0=1, weight_decay=0.1),
    "NAdam": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "RAdam": dict(lr=0.01, weight_decay=0.1),
    "RMSprop": dict(lr=0.01, centered=True, momentum=0.5),
    "Rprop": dict(lr=0.05),
}
SHAPES = [(3, 5), (7,)]
OPTION_KEYS = set(lp.KEYS)


def _backends(name):
    alg = getattr(optimlab, name).algorithm
    return [b for b in ("forloop", "foreach", "cpp", "triton")
            if b in _dispatch.backends_of(alg) and _dispatch._unavailable(alg, b) is None]


CASES = [pytest.param(n, b, id=f"{n}-{b}") for n in NAMES for b in _backends(n)]


def _params(dtype=torch.bfloat16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES]


def _set_grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def _make(name, params, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float32-param warning is tested on its own
        return getattr(optimlab, name)(params, **{**KWARGS[name], **kw})


def _run(name, params, steps, first=0, opt=None, **kw):
    opt = opt or _make(name, params, **kw)
    for t in range(first, first + steps):
        _set_grads(params, t)
        opt.step()
    return opt


def _bits(t):
    return t.detach().view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t.detach()


def _assert_bitwise(a, b, where=""):
    assert a.dtype == b.dtype and a.shape == b.shape, where
    assert torch.equal(_bits(a), _bits(b)), where


def _assert_same_run(params_a, opt_a, params_b, opt_b, scalars_close=False):
    """Params and state bit for bit (0-dim scalars only close with ``scalars_close``: the
    backends evaluate e.g. ASGD's eta in different precisions, as torch's do)."""
    for i, (p, q) in enumerate(zip(params_a, params_b)):
        _assert_bitwise(p, q, f"param {i}")
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert list(sa) == list(sb), f"state {i} keys"
        for k in sa:
            if scalars_close and not lp._is_element(k, sa[k], p) and sa[k].is_floating_point():
                torch.testing.assert_close(sa[k], sb[k])
            else:
                _assert_bitwise(sa[k], sb[k], f"state {i} {k}")


@pytest.fixture
def backend_env(monkeypatch):
    def select(backend):
        monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    return select


# ---- (a) options off -------------------------------------------------------------------
@pytest.mark.parametrize("name,backend", CASES)
def test_options_off_change_nothing(name, backend, backend_env):
    backend_env(backend)
    plain, explicit, in_group = _params(), _params(), _params()
    o_plain = _run(name, plain, 2)
    o_explicit = _run(name, explicit, 2, kahan_sum=False, stochastic_rounding=False,
                      state_dtype=None, rounding_seed=None)
    o_group = _run(name, in_group, 2, opt=_make(name, [{"params": in_group, "kahan_sum": False}]))
    # the keys are absent unless given: param groups and state_dict are torch.optim's
    ref = getattr(torch.optim, name)(_params(), **KWARGS[name])
    assert o_plain.param_groups[0].keys() == o_explicit.param_groups[0].keys() == ref.param_groups[0].keys()
    assert set(lp.KEYS) <= o_group.param_groups[0].keys()  # given in the group: all four, off
    _assert_same_run(plain, o_plain, explicit, o_explicit)
    _assert_same_run(plain, o_plain, in_group, o_group)


# ---- (b) Kahan and (c) stochastic writes against the rule, by hand ---------------------------
def _kahan_by_hand(p_old, c_old, p_new):
    p32, c32 = p_old.float(), c_old.float()
    d = p_new - p32
    y = c32 + d
    t = (p32 + y).to(p_old.dtype)
    c = (y - (t.float() - p32)).to(p_old.dtype)
    return t, c


def _sr_by_hand(x, seed, step):
    """The stochastic rounding rule in numpy uint32/uint64 arithmetic (Philox from lp.philox,
    which test_philox_matches_triton checks against Triton)."""
    x = x.detach().contiguous().reshape(-1)
    idx = torch.arange(x.numel(), dtype=torch.int64)
    r = lp.philox(seed, idx & 0xFFFFFFFF, idx >> 32, step & 0xFFFFFFFF, step >> 32)[0].numpy()
    bits = x.numpy().view(np.uint32).astype(np.uint64)
    top = (((bits + (r.astype(np.uint64) & 0xFFFF)) & 0xFFFFFFFF) >> 16).astype(np.uint16)
    out = torch.from_numpy(top.view(np.int16).copy()).view(torch.bfloat16)
    return torch.where(x.isnan(), x.to(torch.bfloat16), out)


@pytest.mark.parametrize("mode", ["kahan", "sr"])
@pytest.mark.parametrize("name,backend", CASES)
def test_write_matches_rule(name, backend, mode, backend_env):
    backend_env(backend)
    ours = _params()
    opt = _make(name, ours, **(dict(kahan_sum=True) if mode == "kahan" else
                               dict(stochastic_rounding=True, rounding_seed=11)))
    # the float32 twin: the same backend's update, fed our rounded params and state
    twins = [torch.nn.Parameter(p.detach().float()) for p in ours]
    ref = _make(name, twins)
    for t in range(3):
        _set_grads(ours, t)
        for p, q in zip(ours, twins):
            q.grad = p.grad.float()
        opt._init_group(opt.param_groups[0])  # create our state first: the twin copies it
        before = []
        for p, q in zip(ours, twins):
            with torch.no_grad():
                q.copy_(p.float())
            st = opt.state[p]
            ref.state[q] = {k: (v.float() if lp._is_element(k, v, p) else v.clone())
                            for k, v in st.items() if k not in ("kahan_comp", "sr_seed", "sr_step")}
            before.append((p.detach().clone(), st.get("kahan_comp", torch.zeros(())).clone()))
        opt.step()
        ref.step()
        for i, (p, q) in enumerate(zip(ours, twins)):
            st = opt.state[p]
            if mode == "kahan":
                want_p, want_c = _kahan_by_hand(*before[i], q.detach())
                _assert_bitwise(st["kahan_comp"], want_c, f"step {t} comp {i}")
            else:
                assert st["sr_step"].item() == t + 1 and st["sr_seed"].dtype == torch.int64
                want_p = _sr_by_hand(q, int(st["sr_seed"]), t + 1).view(p.shape)
            _assert_bitwise(p, want_p, f"step {t} param {i}")
            for k, v in ref.state[q].items():  # per-element state rounded to nearest
                want = v.to(p.dtype) if lp._is_element(k, v, q) else v
                _assert_bitwise(st[k], want, f"step {t} state {i} {k}")


# ---- (c) stochastic rounding: backends, seeds, bias --------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_sr_same_bits_on_every_backend(name, backend_env):
    runs = {}
    for backend in _backends(name):
        backend_env(backend)
        params = _params()
        runs[backend] = (params, _run(name, params, 3, stochastic_rounding=True, rounding_seed=5))
    for backend, (params, opt) in runs.items():
        _assert_same_run(params, opt, *runs["forloop"], scalars_close=True)
    backend_env("forloop")
    other = _params()
    _run(name, other, 3, stochastic_rounding=True, rounding_seed=6)
    assert any(not torch.equal(_bits(p), _bits(q)) for p, q in zip(other, runs["forloop"][0]))


@pytest.mark.parametrize("value", [1.0 + 0.3 * 2**-7, -3.7, 1e-3, 6.02e23, 1.3 * 2.0**-130])
def test_sr_unbiased(value):
    n = 200_000
    x = torch.full((n,), value, dtype=torch.float32)
    value = x[0].item()  # as float32 holds it (the last one is subnormal)
    out = lp.stochastic_round(x, 1234567, torch.arange(n), 3).double()
    lo, hi = out.unique().tolist()
    assert lo < value < hi  # only the two bfloat16 neighbours
    frac = (value - lo) / (hi - lo)
    sigma = (hi - lo) * (frac * (1 - frac) / n) ** 0.5
    assert abs(out.mean().item() - value) < 5 * sigma


def test_sr_special_values():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -2.5])
    out = lp.stochastic_round(x, 99, torch.arange(x.numel()), 1)
    assert out[0].isnan() and out[1] == float("inf") and out[2] == -float("inf")
    assert torch.equal(out[3:].view(torch.int16), x[3:].to(torch.bfloat16).view(torch.int16))


def test_sr_index_is_logical_order():
    """A non-contiguous param gets the random bits of its row-major (logical) indices."""
    base = torch.randn(5, 3).to(torch.bfloat16)
    a = torch.nn.Parameter(base.clone())
    b = torch.nn.Parameter(base.t().contiguous().t())  # same values, column-major
    assert not b.is_contiguous()
    opts = [optimlab.Adam([p], lr=0.01, stochastic_rounding=True, rounding_seed=3, foreach=False)
            for p in (a, b)]
    for t in range(2):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(t)).to(torch.bfloat16)
        a.grad, b.grad = g.clone(), g.t().contiguous().t()
        for o in opts:
            o.step()
    _assert_bitwise(a.detach().contiguous(), b.detach().contiguous())


def test_philox_matches_triton():
    """lp.philox is Triton's tl.philox bit for bit (run in Triton's CPU interpreter)."""
    pytest.importorskip("triton")
    script = r'''
import json, sys
import numpy as np, torch, triton, triton.language as tl

@triton.jit
def kernel(c0p, c1p, c2p, c3p, out, seed, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    m = offs < N
    c = [tl.load(q + offs, mask=m).to(tl.uint32, bitcast=True) for q in (c0p, c1p, c2p, c3p)]
    r0, r1, r2, r3 = tl.philox(seed, c[0], c[1], c[2], c[3])
    tl.store(out + offs, r0.to(tl.int32, bitcast=True), mask=m)
    tl.store(out + N + offs, r1.to(tl.int32, bitcast=True), mask=m)
    tl.store(out + 2 * N + offs, r2.to(tl.int32, bitcast=True), mask=m)
    tl.store(out + 3 * N + offs, r3.to(tl.int32, bitcast=True), mask=m)

cases = json.loads(sys.stdin.read())
res = []
for seed, counters in cases:
    cs = [torch.from_numpy(np.array(c, dtype=np.uint32).view(np.int32)) for c in counters]
    n = cs[0].numel()
    out = torch.empty(4 * n, dtype=torch.int32)
    kernel[(1,)](*cs, out, seed, n, BLOCK=64)
    res.append(out.numpy().view(np.uint32).tolist())
print(json.dumps(res))
'''
    gen = np.random.default_rng(0)
    top = 2**32 - 1
    cases = []
    for seed in (0, 1, 12345, 2**31 + 7, 2**32 + 5, 2**61 + 2**40 + 3):
        counters = [gen.integers(0, 2**32, 40, dtype=np.uint64).tolist() for _ in range(4)]
        for c in counters:  # edge values, >= 2**31 included
            c[:4] = [0, 1, 2**31, top]
        counters[2][4:8] = [2**31 - 1, 2**31 + 1, top - 1, 3]
        cases.append((seed, counters))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps(cases), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for (seed, counters), got in zip(cases, json.loads(proc.stdout)):
        ours = lp.philox(seed, *(torch.tensor(c, dtype=torch.int64) for c in counters))
        want = np.array(got, dtype=np.int64).reshape(4, -1)
        for w in range(4):
            assert ours[w].tolist() == want[w].tolist(), (seed, w)


def test_philox_no_int64_overflow():
    # the largest counters and keys: the 32x32 products are split so int64 never overflows
    top = torch.full((3,), 2**32 - 1, dtype=torch.int64)
    out = lp.philox(2**64 - 1, top, top, top, top)
    for w in out:
        assert bool(((w >= 0) & (w < 2**32)).all())


def test_sr_seed_derivation():
    seed = lp.sr_seed(42, 3)
    s = lp.splitmix64(42 + 4 * 0x9E3779B97F4A7C15)
    want = torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(s), dtype=torch.int64)
    assert seed.dtype == torch.int64 and seed.shape == () and seed.item() == want.item()
    assert lp.splitmix64(0) == 0  # the finalizer (the sequence adds the increment first)
    opt = optimlab.SGD([{"params": _params()}, {"params": _params(seed=1)}], lr=0.1,
                       stochastic_rounding=True, rounding_seed=42)
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    flat = [p for g in opt.param_groups for p in g["params"]]
    assert [opt.state[p]["sr_seed"].item() for p in flat] == [lp.sr_seed(42, i).item() for i in range(4)]
    torch.manual_seed(7)
    drawn = optimlab.SGD(_params(), stochastic_rounding=True).param_groups[0]["rounding_seed"]
    torch.manual_seed(7)
    assert drawn == torch.randint(0, 2**62, ()).item()


# ---- (d) state_dtype --------------------------------------------------------------------------
@pytest.mark.parametrize("name,backend", CASES)
def test_state_dtype_bf16_on_fp32(name, backend, backend_env):
    backend_env(backend)
    a, b = _params(torch.float32), _params(torch.float32)
    o_a = _run(name, a, 3, state_dtype=torch.bfloat16)
    o_b = _run(name, b, 3)
    p0 = _params(torch.float32)
    for p, q, r in zip(a, b, p0):
        for k, v in o_a.state[p].items():
            ref = o_b.state[q][k]
            want = torch.bfloat16 if lp._is_element(k, ref, q) else ref.dtype
            assert v.dtype == want, k
        # bf16 moments carry 2**-8 relative rounding each step, so the param's total movement
        # differs from the float32-state run's by a few percent: close, not equal (the exact
        # write rule is tested bitwise above; this checks state_dtype only stores, not rescales)
        torch.testing.assert_close(p - r, q - r, rtol=0.05, atol=2e-3 * KWARGS[name]["lr"] * 10)


# ---- (e) checkpoints ---------------------------------------------------------------------------
def _checkpoint(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


ROUND_TRIP = {
    "sr": dict(stochastic_rounding=True, rounding_seed=7, state_dtype=torch.bfloat16),
    "kahan": dict(kahan_sum=True, state_dtype=torch.float32),
}


# (the interpreted Triton backend, the slowest here, runs the first: Kahan has its test above)
RT_CASES = [pytest.param(n, b, c, id=f"{n}-{b}-{c}") for n, b in (x.values for x in CASES)
            for c in ROUND_TRIP if b != "triton" or c == "sr"]


@pytest.mark.parametrize("name,backend,config", RT_CASES)
def test_state_dict_round_trip(name, backend, config, backend_env):
    backend_env(backend)
    kw = ROUND_TRIP[config]
    # bf16 params, plus a float32 one (state_dtype applies to it too)
    whole = _params() + [torch.nn.Parameter(torch.linspace(-1, 1, 4))]
    o_whole = _run(name, whole, 3, **kw)
    ckpt = _checkpoint(o_whole)  # (a copy: the uninterrupted run goes on unchanged)
    saved = [torch.nn.Parameter(p.detach().clone()) for p in whole]
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in saved]
    o_res = _make(name, resumed, **{**kw, "rounding_seed": 999})  # the checkpoint's seed wins
    o_res.load_state_dict(ckpt)
    if config == "sr":
        assert o_res.param_groups[0]["rounding_seed"] == 7
    _run(name, whole, 3, first=3, opt=o_whole)
    _run(name, resumed, 3, first=3, opt=o_res)
    _assert_same_run(whole, o_whole, resumed, o_res)
    # torch.optim loads it and steps, ignoring the extras
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in saved]
    t_opt = getattr(torch.optim, name)(theirs, **KWARGS[name])
    t_opt.load_state_dict(ckpt)
    assert OPTION_KEYS <= t_opt.param_groups[0].keys()
    _set_grads(theirs, 3)
    t_opt.step()
    assert all(bool(p.isfinite().all()) for p in theirs)


@pytest.mark.parametrize("name", NAMES)
def test_torch_checkpoint_keeps_constructor_options(name):
    theirs = _params()
    t_opt = getattr(torch.optim, name)(theirs, **KWARGS[name])
    _set_grads(theirs, 0)
    t_opt.step()
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    opt = _make(name, ours, state_dtype=torch.float32, kahan_sum=True)
    opt.load_state_dict(_checkpoint(t_opt))
    group = opt.param_groups[0]
    assert group["kahan_sum"] is True and group["state_dtype"] is torch.float32
    for k, v in opt.state[ours[0]].items():
        if lp._is_element(k, v, ours[0]):
            assert v.dtype == torch.float32, k
    _run(name, ours, 1, first=1, opt=opt)
    assert "kahan_comp" in opt.state[ours[0]]


# ---- (f) bad input ------------------------------------------------------------------------------
CAPTURABLE = [n for n in NAMES if n not in ("SGD", "Adagrad")]


@pytest.mark.parametrize("name", NAMES)
def test_bad_options_raise(name):
    bad = [
        (dict(kahan_sum=True, stochastic_rounding=True), "cannot both be True"),
        (dict(state_dtype=torch.float64), "state_dtype must be None, torch.float32"),
        (dict(state_dtype="bf16"), "state_dtype must be"),
        (dict(kahan_sum=1), "kahan_sum must be a bool"),
        (dict(stochastic_rounding="yes"), "stochastic_rounding must be a bool"),
        (dict(rounding_seed=-1), "rounding_seed must be None or an int"),
        (dict(rounding_seed=1.5), "rounding_seed must be None or an int"),
        (dict(rounding_seed=True), "rounding_seed must be None or an int"),
        (dict(kahan_sum=True, differentiable=True), "differentiable=True"),
    ]
    if name in CAPTURABLE:
        bad.append((dict(state_dtype=torch.bfloat16, capturable=True), "CUDA graph cannot capture"))
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            getattr(optimlab, name)(_params(), **{**KWARGS[name], **kw})
    with pytest.raises(ValueError, match="complex"):
        getattr(optimlab, name)([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))],
                                **KWARGS[name], kahan_sum=True)
    fp16 = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))]
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 is float16: use kahan_sum"):
        getattr(optimlab, name)(fp16, **KWARGS[name], stochastic_rounding=True)


def test_bad_group_added_or_changed_raises_before_anything_changes():
    good = _params()
    opt = optimlab.Adam([{"params": good}], lr=0.1, stochastic_rounding=True, rounding_seed=1)
    w16 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    with pytest.raises(ValueError, match="parameter 'w16' is float16"):  # named params: by name
        optimlab.SGD([("w", good[0]), ("w16", w16)], stochastic_rounding=True)
    with pytest.raises(ValueError, match="parameter 0 of param group 1 is float16"):
        opt.add_param_group({"params": [w16]})
    with pytest.raises(ValueError, match="parameter 1 of param group 1 is float16"):
        optimlab.SGD(_params()).add_param_group({"params": [good[1], w16], "stochastic_rounding": True})
    assert len(opt.param_groups) == 1
    late = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    opt.add_param_group({"params": [late]})
    late.data = late.data.half()  # the dtype changes after the group was checked
    _set_grads(good, 0)
    late.grad = torch.ones(3, dtype=torch.float16)
    before = [p.detach().clone() for p in good]
    with pytest.raises(ValueError, match="is float16: use kahan_sum"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(good, before)) and not opt.state
    opt.param_groups[0]["differentiable"] = True  # a group changed by hand: checked at plan time
    late.data = late.data.bfloat16()
    with pytest.raises(ValueError, match="differentiable=True"):
        opt.step()
    assert not opt.state


def test_float32_params_warn_once():
    with pytest.warns(UserWarning, match="float32/float64 params are updated as without it") as rec:
        opt = optimlab.SGD([{"params": _params(torch.float32)}, {"params": _params(torch.float64)}],
                           lr=0.1, kahan_sum=True)
        opt.add_param_group({"params": _params(torch.float32)})
        for g in opt.param_groups:
            _set_grads(g["params"], 0)
        opt.step()
    assert len([r for r in rec if "updated as without it" in str(r.message)]) == 1
    # ignored for them: exactly the run without the option
    ref = _params(torch.float32)
    o_ref = optimlab.SGD(ref, lr=0.1)
    _set_grads(ref, 0)
    o_ref.step()
    _assert_bitwise(opt.param_groups[0]["params"][0], ref[0])
    assert "kahan_comp" not in opt.state[opt.param_groups[0]["params"][0]]


# ---- (g) tiny updates accumulate ---------------------------------------------------------------
def test_kahan_accumulates_tiny_updates():
    steps, lr, g = 400, 1.0, 2.5e-4  # each update is ~1/30 of a bf16 ulp at 1.0
    runs = {}
    for kw in ({}, dict(kahan_sum=True), dict(stochastic_rounding=True, rounding_seed=0)):
        p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
        opt = optimlab.SGD([p], lr=lr, foreach=False, **kw)
        p.grad = torch.full_like(p, g)
        for _ in range(steps):
            opt.step()
        runs[next(iter(kw), "naive")] = p.detach().float()
    exact = torch.ones(64, dtype=torch.float32)
    for _ in range(steps):
        exact -= lr * torch.tensor(g, dtype=torch.bfloat16).float()
    ulp = 2.0**-8  # bf16 spacing just below 1.0
    assert torch.equal(runs["naive"], torch.ones(64))  # plain bf16 stalls
    assert (runs["kahan_sum"] - exact).abs().max() <= 2 * ulp
    assert abs(runs["stochastic_rounding"].mean() - exact.mean()) <= 2 * ulp


# ---- AMP, splitting big params ------------------------------------------------------------------
def test_amp_found_inf_skips_everything():
    params = _params()
    opt = optimlab.Adam(params, lr=0.01, fused=True, stochastic_rounding=True, rounding_seed=4)
    ref_params = _params()
    ref = optimlab.Adam(ref_params, lr=0.01, fused=True, stochastic_rounding=True, rounding_seed=4)
    _set_grads(params, 0)
    _set_grads(ref_params, 0)
    opt.step()
    ref.step()
    snap = ([p.detach().clone() for p in params],
            [{k: v.clone() for k, v in opt.state[p].items()} for p in params])
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    for p, q, st in zip(params, snap[0], snap[1]):
        _assert_bitwise(p, q)
        for k in st:
            _assert_bitwise(opt.state[p][k], st[k], k)
    opt.found_inf = torch.tensor(0.0)  # unscaled in the kernel: as the step without a scale
    _set_grads(params, 1)
    _set_grads(ref_params, 1)
    for p in params:
        p.grad *= 2
    opt.step()
    ref.step()
    _assert_same_run(params, opt, ref_params, ref)


@pytest.mark.parametrize("name", ["SGD", "Adam", "ASGD", "Rprop"])
@pytest.mark.parametrize("backend", ["forloop", "foreach", "cpp"])
def test_big_params_split_into_slices(name, backend, backend_env, monkeypatch):
    if backend not in _backends(name):
        pytest.skip(f"{backend} cannot run here")
    backend_env(backend)
    kw = dict(stochastic_rounding=True, rounding_seed=2, state_dtype=torch.float32)
    whole = _params()
    o_whole = _run(name, whole, 3, **kw)
    monkeypatch.setattr(lp, "CHUNK_BYTES", 100)  # (3, 5) params in slices of a few elements
    sliced = _params()
    o_sliced = _run(name, sliced, 3, **kw)
    _assert_same_run(whole, o_whole, sliced, o_sliced)
