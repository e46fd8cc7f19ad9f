"""The C++ CPU backend ("cpp") beyond the parity harness.

test_parity.py runs the cpp backend on every configuration of torch's database
(``OPTIMLAB_BACKEND=cpp`` against torch's for-loop). Here: the odd tensors
(zero-size, 0-dim, non-contiguous, transposed, channels_last, grads missing on
some steps, mixed dtypes incl. bf16/fp16, NaN/inf grads), ``fused=True``
selection, AMP (grad_scale/found_inf, GradScaler) and the no-compiler path.
"""

from __future__ import annotations

import collections
import warnings

import pytest
import torch

import optimlab
import optimlab.kernels.cpu as cpu  # registers the cpp backend
from optimlab import _dispatch, optimizer
from optimlab.kernels import cpp_build

# name -> list of constructor kwargs covering the options of each algorithm
CASES = {
    "Adam": [dict(lr=0.05), dict(lr=0.05, weight_decay=0.1, amsgrad=True, maximize=True)],
    "AdamW": [dict(lr=0.05, amsgrad=True)],
    "SGD": [dict(lr=0.1), dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
            dict(lr=0.1, momentum=0.8, dampening=0.3, maximize=True)],
    "Adagrad": [dict(lr=0.1, lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.1)],
    "Adadelta": [dict(lr=0.5, weight_decay=0.1, maximize=True)],
    "Adamax": [dict(lr=0.1, weight_decay=0.1)],
    "ASGD": [dict(lr=0.05, t0=2, lambd=0.1, weight_decay=0.1)],
    "NAdam": [dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True)],
    "RAdam": [dict(lr=0.05, weight_decay=0.1)],
    "RMSprop": [dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1),
                dict(lr=0.01, alpha=0.9, maximize=True)],
    "Rprop": [dict(lr=0.1, etas=(0.3, 1.9), step_sizes=(0.01, 0.5))],
}
ALL = [pytest.param(name, kw, id=f"{name}-{i}") for name, kws in CASES.items() for i, kw in enumerate(kws)]
STEPS = 7  # RAdam rectifies from step 6 on

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    # the kernels round once per step; the for-loop rounds after every op
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}
TOL[torch.complex128], TOL[torch.complex64] = TOL[torch.float64], TOL[torch.float32]


@pytest.fixture(scope="module", autouse=True)
def _cpp_available():
    why = cpu.availability()
    if why is not None:
        pytest.skip(why)


def _backend(opt):
    return {c.name for c in opt.backends()}


def _grad_for(p: torch.Tensor, step: int, i: int) -> torch.Tensor:
    """A deterministic gradient for ``p`` at ``step`` (same values whatever p's layout)."""
    gen = torch.Generator().manual_seed(1000 * step + i)
    g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    if step % 3 == 2:  # flip some signs so Rprop sees sign changes
        g = -g
    return g.to(p.dtype)


def _clone_params(params):
    out = []
    for p in params:
        q = torch.empty_strided(p.size(), p.stride(), dtype=p.dtype)
        q.copy_(p.detach())
        out.append(q.requires_grad_())
    return out


def _run(name, kwargs, params, grads_fn, backend, steps=STEPS):
    """Run ``steps`` steps with ``backend`` ("cpp" or "forloop") on copies of ``params``."""
    params = _clone_params(params)
    flags = dict(foreach=False) if backend == "forloop" else {}
    opt = getattr(optimlab, name)(params, **kwargs, **flags)
    with pytest.MonkeyPatch.context() as mp:
        if backend == "cpp":
            mp.setenv("OPTIMLAB_BACKEND", "cpp")
        for step in range(steps):
            for i, p in enumerate(params):
                g = grads_fn(p, step, i)
                p.grad = None if g is None else g
            opt.step()
        assert _backend(opt) == {backend}
    return params, opt


def _assert_same(ours, ref, equal_nan=False):
    (po, oo), (pr, orf) = ours, ref
    for a, b in zip(po, pr):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.detach(), b.detach(), equal_nan=equal_nan, **TOL[a.dtype])
    so, sr = oo.state_dict()["state"], orf.state_dict()["state"]
    assert so.keys() == sr.keys()
    for k in sr:
        assert list(so[k]) == list(sr[k])
        for key, v in sr[k].items():
            if torch.is_tensor(v):
                tol = TOL.get(v.dtype, TOL[torch.float32])
                assert so[k][key].dtype == v.dtype, (k, key)
                torch.testing.assert_close(so[k][key], v, equal_nan=equal_nan, **tol)


def _compare(name, kwargs, params, grads_fn=_grad_for, equal_nan=False, steps=STEPS):
    ours = _run(name, kwargs, params, grads_fn, "cpp", steps)
    ref = _run(name, kwargs, params, grads_fn, "forloop", steps)
    _assert_same(ours, ref, equal_nan)
    return ours


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- odd tensors -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", ALL)
def test_zero_size_and_0dim(name, kwargs):
    params = [_randn(0), _randn(3, 0, 2), _randn(()), _randn(5), _randn(70000, seed=1)]
    _compare(name, kwargs, params)


@pytest.mark.parametrize("name,kwargs", ALL)
def test_non_contiguous_views(name, kwargs):
    base = _randn(6, 8)
    strided = base[:, ::2]  # a view with a gap: not dense
    transposed = _randn(5, 7, seed=1).t()  # dense, not contiguous
    big = _randn(300, 400, seed=2).t()  # enough elements for several parallel chunks
    params = [strided, transposed, big]

    def grads(p, step, i):  # grads contiguous while the params are not
        return _grad_for(p, step, i).contiguous()

    _compare(name, kwargs, params, grads)


@pytest.mark.parametrize("name,kwargs", ALL)
def test_transposed_param_contiguous_grad(name, kwargs):
    """torch 2.13's fused CPU Adam gets this wrong (it pairs elements by memory order)."""
    p = _randn(64, 33).t()
    (ours,), _ = _compare(name, kwargs, [p], lambda p, s, i: _grad_for(p, s, i).contiguous())
    assert ours.stride() == p.stride()  # updated in place, layout kept


@pytest.mark.parametrize("name,kwargs", ALL)
@pytest.mark.parametrize("grad_layout", ["channels_last", "contiguous"])
def test_channels_last(name, kwargs, grad_layout):
    p = _randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    fmt = torch.channels_last if grad_layout == "channels_last" else torch.contiguous_format

    def grads(p, step, i):
        return _grad_for(p, step, i).contiguous(memory_format=fmt)

    (ours,), _ = _compare(name, kwargs, [p], grads)
    assert ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name,kwargs", ALL)
def test_grads_missing_on_some_steps(name, kwargs):
    params = [_randn(4, 3), _randn(5, seed=1), _randn(7, seed=2)]

    def grads(p, step, i):
        if (i == 1 and step % 2 == 0) or (i == 2 and step < 3):
            return None
        return _grad_for(p, step, i)

    _compare(name, kwargs, params, grads)


@pytest.mark.parametrize("name,kwargs", ALL)
def test_mixed_dtypes_in_one_group(name, kwargs):
    shapes = [(40,), (3, 5), (33,), (2, 9)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    params = [(_randn(*s, seed=i) * 0.5).to(d) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    ours, opt = _compare(name, kwargs, params)
    for p, d in zip(ours, dtypes):
        assert p.dtype == d
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.dtype == d  # state stays in the param's dtype


@pytest.mark.parametrize("name,kwargs", ALL)
def test_nan_and_inf_grads(name, kwargs):
    params = [_randn(50), _randn(3, 4, seed=1)]

    def grads(p, step, i):
        g = _grad_for(p, step, i)
        if step == 1:
            g.view(-1)[3] = float("nan")
        if step == 2:
            g.view(-1)[5] = float("inf")
            g.view(-1)[6] = float("-inf")
        return g

    _compare(name, kwargs, params, grads, equal_nan=True, steps=4)


@pytest.mark.parametrize("name,kwargs", ALL)
def test_complex_params(name, kwargs):
    params = [torch.randn(4, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(0)),
              _randn(5)]
    _compare(name, kwargs, params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_asgd_average_written_at_any_alignment(dtype):
    """ASGD's ``ax = param`` (mu == 1) uses non-temporal stores on aligned full vectors and
    plain stores elsewhere: every offset of ``ax`` in its buffer gets exactly the new param."""
    ext = cpu.load()
    n = 1000  # several full vectors and a partial one
    for offset in range(17):
        p, g = _randn(n, dtype=dtype), _randn(n, dtype=dtype, seed=1)
        ax = torch.full((n + offset,), float("nan"), dtype=dtype)[offset:]
        expected = p * (1 - 0.1 * 0.01) - 0.01 * g
        # eta 0.01, mu 1, decay 1 - lambd * eta (lambd 0.1), weight_decay 0
        ext.asgd([p], [g], [ax], [torch.zeros(())], None, [0.01], [1.0], [1 - 0.1 * 0.01], 0.0, False, None, None)
        torch.testing.assert_close(p, expected, **TOL[dtype])
        assert torch.equal(ax, p), offset


# ---- selection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_fused_true_selects_cpp(name):
    p = torch.nn.Parameter(_randn(10))
    opt = getattr(optimlab, name)([p], lr=0.1, fused=True)
    assert opt.backends()[0].name == "cpp"
    assert opt.backends()[0].reason == "fused=True"
    p.grad = _grad_for(p, 0, 0)
    opt.step()


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_fused_matches_torch_fused(name):
    """Same numbers as torch's own fused CPU kernel (contiguous tensors, where torch is right)."""
    kwargs = dict(lr=0.1, weight_decay=0.1) | (dict(momentum=0.9) if name == "SGD" else {})
    ps = [_randn(300, seed=0), _randn(4, 5, seed=1)]
    ours = [p.clone().requires_grad_() for p in ps]
    ref = [p.clone().requires_grad_() for p in ps]
    o = getattr(optimlab, name)(ours, fused=True, **kwargs)
    r = getattr(torch.optim, name)(ref, fused=True, **kwargs)
    for step in range(4):
        for i, (a, b) in enumerate(zip(ours, ref)):
            a.grad = _grad_for(a, step, i)
            b.grad = _grad_for(b, step, i)
        o.step()
        r.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_default_on_cpu_is_cpp():
    """cpp is the CPU default, unless the measured-defaults table names another backend."""
    p = torch.nn.Parameter(_randn(10))
    measured = getattr(_dispatch, "measured_defaults", dict)().get("cpu", {}).get("choices", {})
    for name in CASES:
        opt = getattr(optimlab, name)([p])
        expected = measured.get(opt.algorithm, {}).get("float64", "cpp")
        assert opt.backends()[0].name == expected, name


# ---- AMP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("found", [0.0, 1.0])
@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad", "SGD"])
def test_grad_scale_and_found_inf_like_torch_fused(name, found):
    kwargs = dict(lr=0.1) | (dict(momentum=0.9) if name == "SGD" else {})
    ps = [_randn(100, seed=0), _randn(3, 4, seed=1)]
    ours = [p.clone().requires_grad_() for p in ps]
    ref = [p.clone().requires_grad_() for p in ps]
    o = getattr(optimlab, name)(ours, fused=True, **kwargs)
    r = getattr(torch.optim, name)(ref, fused=True, **kwargs)
    scale = torch.tensor(64.0)
    for step in range(3):
        for i, (a, b) in enumerate(zip(ours, ref)):
            a.grad = _grad_for(a, step, i) * 64
            b.grad = _grad_for(b, step, i) * 64
        found_inf = torch.tensor(found if step == 1 else 0.0)
        for opt in (o, r):  # what torch.amp.GradScaler does around step()
            opt.grad_scale, opt.found_inf = scale, found_inf
            opt.step()
            del opt.grad_scale, opt.found_inf
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, **TOL[torch.float64])
            torch.testing.assert_close(a.grad, b.grad, **TOL[torch.float64])  # unscaled in place
    so, sr = o.state_dict()["state"], r.state_dict()["state"]
    for k in sr:
        for key in sr[k]:
            torch.testing.assert_close(so[k][key], sr[k][key], **TOL[torch.float64])


def test_grad_scaler_end_to_end():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    ref_model = torch.nn.Linear(8, 4)
    ref_model.load_state_dict(model.state_dict())
    ours = optimlab.Adam(model.parameters(), lr=0.01, fused=True)
    ref = torch.optim.Adam(ref_model.parameters(), lr=0.01, fused=True)
    s1 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    s2 = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(16, 8)
    for step in range(4):
        for m, opt, scaler in ((model, ours, s1), (ref_model, ref, s2)):
            opt.zero_grad()
            loss = m(x).pow(2).sum() * (float("inf") if step == 2 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        for a, b in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b)
        assert s1.get_scale() == s2.get_scale()


def test_version_counter_bumped():
    """An in-place update through raw pointers is still seen by autograd."""
    p = torch.nn.Parameter(_randn(5))
    opt = optimlab.SGD([p], lr=0.1, fused=True)
    y = (p * p).sum()  # saves p for backward
    p.grad = torch.ones_like(p)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_version_counters_bumped_for_many_tensors():
    """Enough tensors for prepare() to split them between threads, an empty one among them:
    every written tensor's version advances once per step (the grads, only read, keep theirs)."""
    params = [torch.nn.Parameter(_randn(3)) for _ in range(700)] + [torch.nn.Parameter(_randn(0))]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = optimlab.Adam(params, lr=0.1, fused=True)
    opt.step()
    versions = [(p._version, p.grad._version, opt.state[p]["exp_avg"]._version) for p in params]
    opt.step()
    for p, (v_p, v_g, v_m) in zip(params, versions):
        assert (p._version, p.grad._version, opt.state[p]["exp_avg"]._version) == (v_p + 1, v_g, v_m + 1)


# ---- unavailable -------------------------------------------------------------------------------
@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
    """The real availability path on a machine without a compiler (nothing built yet, not
    at install time either)."""
    monkeypatch.setattr(cpp_build, "_PREBUILT", tmp_path / "prebuilt")
    for hook in ("plan_scan", "state_columns"):  # (restored after the test)
        monkeypatch.setattr(optimizer, hook, getattr(optimizer, hook))
    monkeypatch.setattr(cpp_build, "_module", None)
    monkeypatch.setattr(cpp_build, "_checked", False)
    monkeypatch.setattr(cpp_build, "_unavailable_reason", None)
    monkeypatch.setattr(cpp_build.shutil, "which", lambda name: None)
    monkeypatch.setattr(_dispatch, "_warned", set())


def test_no_compiler_reason(no_compiler):
    why = cpu.availability()
    assert why is not None and "no C++ compiler found" in why


def test_no_compiler_explicit_requests_raise(no_compiler, monkeypatch):
    p = torch.nn.Parameter(_randn(4))
    p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="fused=True asks for the cpp backend.*no C\\+\\+ compiler"):
        optimlab.Adam([p], fused=True).step()
    monkeypatch.setenv("OPTIMLAB_BACKEND", "cpp")
    with pytest.warns(UserWarning) as record:  # the env override falls back, with a warning
        optimlab.RMSprop([p]).step()
    assert any("OPTIMLAB_BACKEND=cpp" in str(w.message) for w in record)


def test_no_compiler_default_warns_once(no_compiler):
    p = torch.nn.Parameter(_randn(4))
    before = p.detach().clone()
    p.grad = torch.ones_like(p)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler") as record:
        opt = optimlab.Adam([p], lr=0.1)
        opt.step()
        optimlab.SGD([p], lr=0.1).step()
        opt.step()
    assert len([w for w in record if "C++" in str(w.message)]) == 1
    assert opt.backends()[0].name == "foreach"
    assert not torch.equal(p.detach(), before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # no second warning


# ---- instruction set ---------------------------------------------------------------------------
@pytest.mark.parametrize("torch_says,built", [("AVX512", "AVX512"), ("AVX2", "AVX2"), ("DEFAULT", "DEFAULT"),
                                              ("ZVECTOR", "DEFAULT")])
def test_instruction_set_is_the_highest_the_cpu_runs(monkeypatch, torch_says, built):
    monkeypatch.delenv("OPTIMLAB_CPU_ISA", raising=False)
    monkeypatch.setattr(cpp_build.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: torch_says)
    assert cpu.capability() == built


def test_instruction_set_override(monkeypatch):
    monkeypatch.setattr(cpp_build.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("OPTIMLAB_CPU_ISA", "avx2")
    assert cpu.capability() == "AVX2"
    monkeypatch.setenv("OPTIMLAB_CPU_ISA", "sse4")
    with pytest.raises(ValueError, match="expected one of AVX512, AVX2, DEFAULT"):
        cpu.capability()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setenv("OPTIMLAB_CPU_ISA", "AVX512")  # would be an illegal instruction here
    with pytest.raises(ValueError, match="this CPU runs AVX2 at most"):
        cpu.capability()


# ---- bitwise agreement with torch's for-loop -----------------------------------------------------
BITWISE = [  # the kernels whose ops are all correctly rounded in torch too (no sqrt: torch's
    # CPU sqrt is MKL's, within 1 ulp but not always the correctly rounded value the kernels use)
    ("SGD", dict(momentum=0.9)), ("SGD", dict(momentum=0.5, dampening=0.3, nesterov=False, maximize=True)),
    ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.1)), ("SGD", {}),
    ("ASGD", {}), ("ASGD", dict(t0=2, lambd=0.1, weight_decay=0.1, maximize=True)),
    ("Adamax", {}), ("Adamax", dict(weight_decay=0.1, maximize=True)),
    ("Rprop", {}), ("Rprop", dict(etas=(0.3, 1.9), step_sizes=(1e-4, 0.5), maximize=True)),
]


def _cpp_and_torch_forloop(name, kwargs, dtype, steps=6):
    """``steps`` steps of optimlab's cpp backend and of torch's for-loop on one 1003-element
    param (full vectors and a tail): ((param, optimizer), (param, optimizer))."""
    if cpu.capability() == "DEFAULT":  # no FMA unit assumed: ATen's fmadd is then a*b+c
        pytest.skip("bitwise agreement is checked on x86-64 builds with FMA (AVX2/AVX-512)")
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(1003, generator=gen, dtype=dtype)
    grads = [torch.randn(p0.shape, generator=gen, dtype=dtype) for _ in range(steps)]
    ours, ref = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    o = getattr(optimlab, name)([ours], **kwargs)
    r = getattr(torch.optim, name)([ref], foreach=False, **kwargs)
    assert _backend(o) == {"cpp"}
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        o.step()
        r.step()
    return (ours, o), (ref, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs", BITWISE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BITWISE)])
def test_bitwise_equal_to_torch_forloop(name, kwargs, dtype):
    """These cpp kernels round exactly as torch's for-loop ops do (explicit FMAs where ATen's
    kernels have them, -ffp-contract=off elsewhere): same bits for params and every state entry,
    full vectors and the tail alike."""
    (ours, o), (ref, r) = _cpp_and_torch_forloop(name, dict(lr=0.01, **kwargs), dtype)
    assert torch.equal(ours, ref)
    for key, value in r.state[ref].items():
        if torch.is_tensor(value):
            assert torch.equal(o.state[ours][key], value), key


@pytest.mark.parametrize("named", [False, True])
def test_unsupported_dtype_is_refused_before_anything_changes(named):
    """A float8 param next to a float32 one: a clear error naming the parameter, raised at plan
    time, so the float32 param and all state stay untouched (torch's for-loop would update the
    first param and then fail inside lerp_)."""
    good = torch.nn.Parameter(_randn(5, dtype=torch.float32))
    bad = torch.nn.Parameter(torch.zeros(3, dtype=torch.float8_e4m3fn))
    good.grad, bad.grad = torch.ones_like(good), torch.zeros_like(bad)
    params = [("w", good), ("fp8", bad)] if named else [good, bad]
    opt = optimlab.Adam(params, lr=0.1)
    before = good.detach().clone()
    where = "parameter 'fp8'" if named else "parameter 1 of its param group"
    message = rf"optimlab adam \(cpp backend\): {where} has dtype torch.float8_e4m3fn"
    with pytest.raises(RuntimeError, match=message):
        opt.step()
    assert torch.equal(good.detach(), before) and len(opt.state) == 0


STEPPED = ["Adam", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "Rprop",
           "Adafactor"]  # the cpp algorithms with step counters


@pytest.mark.parametrize("name", STEPPED)
def test_kernel_refusal_leaves_state_untouched(name):
    """State of the wrong shape (a bad checkpoint): the kernel refuses it before it writes
    anything, step counters included (the step protocol: their versions do not move either,
    nothing is advanced and taken back)."""
    p = torch.nn.Parameter(_randn(6))
    opt = getattr(optimlab, name)([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    key = next(k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.dim() == 1)
    opt.state[p][key] = torch.zeros(5, dtype=p.dtype)  # wrong shape
    before, versions = snapshot_state(opt, p), _versions(opt, p)
    with pytest.raises(RuntimeError, match="has shape"):
        opt.step()
    after = snapshot_state(opt, p)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert _versions(opt, p) == versions


@pytest.mark.parametrize("name", STEPPED)
def test_skipped_step_leaves_counters_untouched(name, monkeypatch):
    """found_inf != 0 (GradScaler saw an inf): nothing changes, not the step counters, not
    their versions (torch's fused contract; nothing is advanced and then taken back)."""
    monkeypatch.setenv("OPTIMLAB_BACKEND", "cpp")
    p = torch.nn.Parameter(_randn(6))
    opt = getattr(optimlab, name)([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    before, versions = snapshot_state(opt, p), _versions(opt, p)
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    after = snapshot_state(opt, p)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert _versions(opt, p) == versions
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert opt.state[p]["step"].item() == 2 and opt.state[p]["step"]._version > versions["step"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64])
@pytest.mark.parametrize("name", STEPPED)
def test_step_counters_of_other_dtypes(name, dtype):
    """Counters of another dtype (a checkpoint's int64 steps, float64 ones) advance as the
    for-loop's ``step += 1`` does and give its scalars; one param's counter differs."""
    params = [_randn(4, 3), _randn(5, seed=1)]
    results = []
    for backend in ("cpp", "forloop"):
        ps = _clone_params(params)
        opt = getattr(optimlab, name)(ps, lr=0.1, **({} if backend == "cpp" else dict(foreach=False)))
        for step in range(4):
            for i, p in enumerate(ps):
                p.grad = _grad_for(p, step, i)
            if step == 1:  # as a checkpoint may hold them
                for i, p in enumerate(ps):
                    opt.state[p]["step"] = opt.state[p]["step"].to(dtype) + i
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("OPTIMLAB_BACKEND", backend)
                opt.step()
        results.append((ps, opt))
    _assert_same(*results)
    ours, ref = results
    for a, b in zip(ours[0], ref[0]):
        sa, sb = ours[1].state[a]["step"], ref[1].state[b]["step"]
        assert sa.dtype == sb.dtype == dtype and sa.item() == sb.item()


def test_step_counter_not_one_element_is_refused():
    p = torch.nn.Parameter(_randn(6))
    opt = optimlab.Adam([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    opt.state[p]["step"] = torch.zeros(2)
    before = snapshot_state(opt, p)
    with pytest.raises(RuntimeError, match="step counter of tensor 0 is not a 1-element tensor"):
        opt.step()
    after = snapshot_state(opt, p)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def snapshot_state(opt, p):
    out = {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
    out["param"] = p.detach().clone()
    return out


def _versions(opt, p):
    out = {k: v._version for k, v in opt.state[p].items() if torch.is_tensor(v)}
    out["param"] = p._version
    return out


MOMENTS = [  # optimizers with a square root: the state that does not pass through it
    ("Adam", {}, ("exp_avg", "exp_avg_sq")), ("AdamW", dict(amsgrad=True), ("exp_avg", "exp_avg_sq")),
    ("NAdam", {}, ("exp_avg", "exp_avg_sq")), ("RAdam", {}, ("exp_avg", "exp_avg_sq")),
    ("Adagrad", dict(initial_accumulator_value=0.1), ("sum",)), ("Adadelta", {}, ("square_avg",)),
    ("RMSprop", dict(centered=True), ("square_avg", "grad_avg")),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs,keys", MOMENTS, ids=[m[0] for m in MOMENTS])
def test_moments_bitwise_equal_to_torch_forloop(name, kwargs, keys, dtype):
    """Where torch's sqrt (MKL's, not always correctly rounded) is not involved, the sqrt users'
    state has the same bits as torch's for-loop too: the EMA/accumulator ops (lerp_, mul_ +
    addcmul_) round as ATen's kernels do. (No weight decay: the grads alone drive these.)"""
    (ours, o), (ref, r) = _cpp_and_torch_forloop(name, kwargs, dtype)
    for key in keys:
        assert torch.equal(o.state[ours][key], r.state[ref][key]), key


# ---- the step's state lookup in C++ (csrc/bindings.cpp state_columns) ------------------------------
class _OwnHash(torch.nn.Parameter):
    """A param type with its own __hash__ (not torch.Tensor's id(p))."""

    def __hash__(self):
        return id(self) + 1


def test_state_columns_reads_what_the_python_lookup_reads():
    cpu.load()
    assert optimizer.state_columns is not None  # installed with the extension
    ps = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)] + [_OwnHash(torch.ones(2))]
    state = collections.defaultdict(dict)
    for i, p in enumerate(ps):
        state[p] = {"a": i, "b": torch.tensor(float(i))} if i != 1 else {"a": i}
    cols = optimizer.state_columns(state, ps, ("a", "b"))
    assert cols[0] == [0, 1, 2, 3] and cols[1][1] is None
    assert [c is state[p].get("b") for c, p in zip(cols[1], ps)] == [True] * 4
    assert optimizer.state_columns(state, ps + [torch.nn.Parameter(torch.ones(1))], ("a",)) is None  # no state
    state[ps[2]] = {}
    assert optimizer.state_columns(state, ps, ("a",)) is None  # empty state: created by the caller
    state[ps[2]] = collections.OrderedDict(a=2)
    assert optimizer.state_columns(state, ps, ("a",)) is None  # not a plain dict: the Python path


def test_state_columns_step_matches_torch_with_own_hash_params():
    cpu.load()
    ps = [_OwnHash(_randn(5, seed=i)) for i in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, theirs = optimlab.Adam(ps, lr=0.1), torch.optim.Adam(ref, lr=0.1)
    for _ in range(3):
        for a, b in zip(ps, ref):
            a.grad = torch.ones_like(a)
            b.grad = torch.ones_like(b)
        ours.step()
        theirs.step()
    for a, b in zip(ps, ref):
        torch.testing.assert_close(a.detach(), b.detach())


def test_plan_scan_reads_what_the_python_passes_read():
    cpu.load()
    assert optimizer.plan_scan is not None  # installed with the extension
    a, b = torch.nn.Parameter(torch.ones(2)), torch.ones(3, dtype=torch.float64, requires_grad=True)
    c = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    a.grad, c.grad = torch.ones(2), torch.ones(2, dtype=torch.bfloat16).to_sparse()
    params, grads, dtypes, any_sparse = optimizer.plan_scan([a, b, c])
    assert params == [a, c] and grads[0] is a.grad and grads[1] is c.grad
    assert dtypes == frozenset({torch.float32, torch.bfloat16}) and any_sparse is True
    assert optimizer.plan_scan([a, _OwnHash(torch.ones(1))]) is None  # a subclass: the Python path
    assert optimizer.plan_scan([]) == ([], [], frozenset(), False)
