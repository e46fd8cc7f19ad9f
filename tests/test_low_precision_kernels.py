"""The fused low-precision write-back (csrc/low_precision.cpp's ``lp_write``, Triton's
``optimlab.kernels.triton.low_precision`` in its CPU interpreter) against the torch path of
``optimlab.low_precision`` (the reference): bit for bit, params and compensations.

One exception, by design: float16 Kahan writes of NaN give NaN where the reference does, but
not always its payload bits (torch's own NaN payloads from float32 add/sub differ between its
vectorized loop and the scalar loop of a tensor's tail; bfloat16 maps every NaN to one value).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import optimlab
from optimlab import low_precision as lp

SIZES = [1, 13, 1037, 70001]
# (seed, step, index base): seeds and steps >= 2**32, index bases >= 2**31 (flat slices)
COUNTERS = [(5, 1, 0), (2**40 + 3, 2**32 + 7, 17), (2**62 - 1, 2**33, 2**31 + 5), (2**64 - 1, 2**53, 0)]
SPECIAL = [0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFF800000, 0xFFFFFFFF, 0x7F800000, 0x80800000, 1,
           0x00400000, 0x80400001, 0x7F7FFFFF, 0x477FF000]  # NaNs, infs, subnormals, huge


def _values(n, gen, scale=1.0):
    """Random float32 over most of the exponent range, special values first."""
    x = torch.randn(n, generator=gen) * torch.exp2(torch.randint(-140, 120, (n,), generator=gen).float())
    bits = torch.tensor(SPECIAL, dtype=torch.int64)
    sp = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)
    k = min(n, sp.numel())
    x[:k] = sp[torch.randperm(sp.numel(), generator=gen)[:k]]
    return x * scale


def _same(a, ref, nan_payload=True):
    a, ref = a.view(torch.int16), ref.view(torch.int16)
    if nan_payload:
        return torch.equal(a, ref)
    na, nr = a.view(torch.float16).isnan(), ref.view(torch.float16).isnan()
    return torch.equal(na, nr) and torch.equal(a[~na], ref[~nr])


def _case(dtype, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return _values(n, gen), _values(n, gen).to(dtype), _values(n, gen, 1e-3).to(dtype)


def _check(write, dtype, n):
    """``write(p, w, comp, mode, seed, step, base)`` against the reference, every mode."""
    w, p0, c0 = _case(dtype, n, n)
    p, ref = p0.clone(), p0.clone()
    ref.copy_(w)
    write(p, w, None, 0, 0, 0, 0)
    assert _same(p, ref), "nearest"
    p, c, rp, rc = p0.clone(), c0.clone(), p0.clone(), c0.clone()
    lp.kahan_write(rp, rc, w)
    write(p, w, c, lp._KAHAN, 0, 0, 0)
    exact = dtype == torch.bfloat16
    assert _same(p, rp, exact) and _same(c, rc, exact), "kahan"
    if dtype == torch.bfloat16:
        for seed, step, base in COUNTERS:
            p = p0.clone()
            write(p, w, None, lp._SR, seed, step, base)
            ref = lp.stochastic_round(w, seed, torch.arange(base, base + n), step)
            assert _same(p, ref), ("stochastic", seed, step, base)


# ---- C++ ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpp():
    from optimlab.kernels import cpp_build

    if cpp_build.availability() is not None:
        pytest.skip(cpp_build.availability())
    return cpp_build.load()


def _cpp_write(cpp):
    def write(p, w, comp, mode, seed, step, base):
        v = p._version
        cpp.lp_write([p], [w], [] if comp is None else [comp], mode, [seed], [step], [base])
        assert p._version > v
    return write


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", SIZES)
def test_cpp_write_matches_reference(cpp, dtype, n):
    torch.set_num_threads(2)  # (70001 elements: several chunks, threaded)
    try:
        _check(_cpp_write(cpp), dtype, n)
    finally:
        torch.set_num_threads(1)


def test_cpp_write_lists_and_dense_layouts(cpp):
    """One call for several tensors; Kahan on a transposed (dense, permuted) param."""
    gen = torch.Generator().manual_seed(7)
    shape = (30, 20)
    ws = [_values(600, gen).view(shape).t() for _ in range(3)]
    ps = [_values(600, gen).view(shape).t().to(torch.bfloat16) for _ in range(3)]
    cs = [_values(600, gen, 1e-3).view(shape).t().to(torch.bfloat16) for _ in range(3)]
    rps = [p.clone(memory_format=torch.preserve_format) for p in ps]
    rcs = [c.clone(memory_format=torch.preserve_format) for c in cs]
    for rp, rc, w in zip(rps, rcs, ws):
        lp.kahan_write(rp, rc, w)
    cpp.lp_write(ps, ws, cs, lp._KAHAN, [], [], [])
    for p, c, rp, rc in zip(ps, cs, rps, rcs):
        assert _same(p, rp) and _same(c, rc)


def test_cpp_write_refuses_bad_inputs(cpp):
    p, w = torch.zeros(4, dtype=torch.bfloat16), torch.zeros(4)
    with pytest.raises(RuntimeError, match="contiguous"):
        cpp.lp_write([torch.zeros(4, 2, dtype=torch.bfloat16)[:, 0]], [w], [], lp._SR, [1], [1], [0])
    with pytest.raises(RuntimeError, match="bfloat16 only"):
        cpp.lp_write([p.half()], [w], [], lp._SR, [1], [1], [0])
    with pytest.raises(RuntimeError, match="float32"):
        cpp.lp_write([p], [w.double()], [], 0, [], [], [])
    with pytest.raises(RuntimeError, match="0-dim"):
        cpp.lp_write([p[0]], [w[0]], [], 0, [], [], [])


# ---- Triton (interpreted on the CPU: conftest sets TRITON_INTERPRET=1) --------------------
@pytest.fixture(scope="module")
def triton_lp():
    pytest.importorskip("triton")
    from optimlab.kernels.triton import interpreting

    if not interpreting():
        pytest.skip("TRITON_INTERPRET=1 was not set before Triton was imported")
    from optimlab.kernels.triton import low_precision

    return low_precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", SIZES[:3])
def test_triton_write_matches_reference(triton_lp, dtype, n):
    def write(p, w, comp, mode, seed, step, base):
        assert triton_lp.supports(p, w, comp, mode)
        triton_lp.write(p, w, comp, mode, seed, step, base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's NaN/overflow warnings (interpreter)
        _check(write, dtype, n)


# ---- wired into the optimizers ----------------------------------------------------------
@pytest.mark.parametrize("config", [dict(stochastic_rounding=True, rounding_seed=2**40 + 1),
                                    dict(kahan_sum=True), dict(state_dtype=torch.float32)])
def test_optimizer_fused_write_equals_torch_path(cpp, config, monkeypatch):
    """AdamW on the cpp backend with the fused write (params in slices, a transposed one) and
    with the torch path (fused writes turned off): the same bits."""
    monkeypatch.setenv("OPTIMLAB_BACKEND", "cpp")
    monkeypatch.setattr(lp, "CHUNK_BYTES", 4000)  # the (40, 30) param: flat slices
    calls = []
    real = lp._FusedWrites.run
    monkeypatch.setattr(lp._FusedWrites, "run", lambda self: (calls.append(1), real(self)))

    def run(fused):
        import optimlab

        if not fused:
            monkeypatch.setattr(lp._FusedWrites, "for_params", classmethod(lambda cls, ps: None))
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(40, 30, generator=gen).to(torch.bfloat16)),
                  torch.nn.Parameter(torch.randn(7, 5, generator=gen).to(torch.bfloat16).t())]
        opt = optimlab.AdamW(params, lr=0.01, **config)
        for t in range(3):
            g = torch.Generator().manual_seed(t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()
        return params, opt

    a, oa = run(True)
    assert calls
    b, ob = run(False)
    for p, q in zip(a, b):
        assert _same(p.detach(), q.detach())
        for k, v in oa.state[p].items():
            assert torch.equal(v, ob.state[q][k]) if v.dtype != torch.bfloat16 else _same(v, ob.state[q][k]), k


@pytest.mark.parametrize("option", [{"kahan_sum": True}, {"stochastic_rounding": True, "rounding_seed": 1}])
def test_write_back_is_recorded_where_ops_are_traced(option):
    """Under a dispatch mode (make_fx, FakeTensorMode...) the write-back runs as torch ops the
    mode sees, not as the C++ kernel it cannot, with the same bits as the eager step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):  # records the in-place ops that write into `watched`'s memory
        def __init__(self, watched):
            super().__init__()
            self.address, self.ops = watched.untyped_storage().data_ptr(), set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if (name.endswith("_") and args and isinstance(args[0], torch.Tensor)
                    and args[0].untyped_storage().data_ptr() == self.address):
                self.ops.add(name)
            return func(*args, **(kwargs or {}))

    steps = []
    for traced in (False, True):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(64, 33).to(torch.bfloat16))
        opt = optimlab.AdamW([p], lr=1e-3, fused=True, **option)
        p.grad = torch.randn(64, 33).to(torch.bfloat16)
        opt.step()  # (loads the extension: the fused write-back is available from here on)
        if traced:
            mode = Seen(p)
            with mode:
                opt.step()
            assert mode.ops, "the param's write-back was not seen by the dispatch mode"
        else:
            opt.step()
        steps.append((p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}))
    (a, sa), (b, sb) = steps
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
