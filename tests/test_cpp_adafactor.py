"""Adafactor on the cpp backend (csrc/adafactor.cpp) beyond the parity harness.

test_parity.py, test_odd_tensors.py and test_amp.py run the cpp backend on every
configuration of the database against torch.optim.Adafactor. Here: the shapes and layouts
the kernel's passes split in its own ways (batched 3-D/4-D matrices, rows split between
work items and threads, column sums of one matrix gathered by several threads, waves of
many params, params larger than a wave), the dtypes, NaN/inf grads, the zero-size refusal
and AMP's unscaling, each against torch's for-loop.
"""

from __future__ import annotations

import pytest
import torch

import optimlab
import optimlab.kernels.cpu as cpu

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    # torch rounds every op to 8 (bf16) or 11 (fp16) bits; the kernel rounds once
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}


@pytest.fixture(scope="module", autouse=True)
def _cpp_available():
    why = cpu.availability()
    if why is not None:
        pytest.skip(why)


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _grad(p, step, i):
    return _randn(*p.shape, dtype=p.dtype, seed=1000 * step + i)


def _run(params, backend, grads=_grad, steps=4, **kwargs):
    params = [torch.empty_strided(p.size(), p.stride(), dtype=p.dtype).copy_(p).requires_grad_() for p in params]
    cls = optimlab.Adafactor if backend == "cpp" else torch.optim.Adafactor
    opt = cls(params, **kwargs, **({} if backend == "cpp" else dict(foreach=False)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMLAB_BACKEND", "cpp")
        for step in range(steps):
            for i, p in enumerate(params):
                p.grad = grads(p, step, i)
            opt.step()
        if backend == "cpp":
            assert {c.name for c in opt.backends()} == {"cpp"}
    return params, opt


def _compare(params, grads=_grad, steps=4, equal_nan=False, **kwargs):
    (ours, oo), (ref, ro) = _run(params, "cpp", grads, steps, **kwargs), _run(params, "torch", grads, steps, **kwargs)
    for a, b in zip(ours, ref):
        assert a.stride() == b.stride()  # updated in place, layout kept
        torch.testing.assert_close(a.detach(), b.detach(), equal_nan=equal_nan, **TOL[a.dtype])
    so, sr = oo.state_dict()["state"], ro.state_dict()["state"]
    assert so.keys() == sr.keys()
    for k in sr:
        assert so[k].keys() == sr[k].keys()
        for key, v in sr[k].items():
            assert so[k][key].dtype == v.dtype and so[k][key].shape == v.shape, (k, key)
            torch.testing.assert_close(so[k][key], v, equal_nan=equal_nan, **TOL.get(v.dtype, TOL[torch.float32]))


SHAPES = [(4, 3), (5,), (), (2, 3, 2), (3, 4, 5, 6), (1, 7), (7, 1), (2, 1, 9), (6, 5, 1, 1), (4, 3, 3, 3),
          (3, 40, 20)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kwargs", [{}, dict(weight_decay=0.1, maximize=True, d=1.2, beta2_decay=-0.5, lr=0.5)],
                         ids=["default", "options"])
def test_shapes_and_dtypes(dtype, kwargs):
    _compare([_randn(*s, dtype=dtype, seed=i) for i, s in enumerate(SHAPES)], **kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_matrices_split_between_threads(dtype):
    """Rows split into work items mid-matrix (a batch's column sums then come from several
    items and threads), also with fewer than 16 columns; batches of many small matrices
    (3 x 3, 1 x 1); a param larger than a wave."""
    params = [_randn(5000, 40, dtype=dtype), _randn(3, 2000, 30, dtype=dtype, seed=1),
              _randn(64, 64, 3, 3, dtype=dtype, seed=2), _randn(100_000, dtype=dtype, seed=3),
              _randn(30_000, 3, dtype=dtype, seed=4), _randn(256, 300, 1, 1, dtype=dtype, seed=5)]
    _compare(params, steps=3)


def test_waves_of_many_small_params():
    params = [_randn(*((40, 5) if i % 3 else (200,)), seed=i) for i in range(400)]
    _compare(params, steps=2, weight_decay=0.1)


def test_non_contiguous_params_and_grads():
    params = [_randn(6, 8)[:, ::2], _randn(5, 7, seed=1).t(), _randn(300, 400, seed=2).t(),
              _randn(2, 3, 4, 5, seed=3).to(memory_format=torch.channels_last), _randn(20, seed=4)[::2]]
    _compare(params, grads=lambda p, s, i: _grad(p, s, i).contiguous())


def test_mixed_dtypes_and_eps1_of_the_first_param():
    """eps1=None: the machine epsilon of the first param, for the whole group (as torch)."""
    params = [_randn(3, 5, dtype=torch.bfloat16), _randn(4, 6, seed=1), _randn(7, dtype=torch.float32, seed=2)]
    ours, _ = _run(params, "cpp")
    ref, _ = _run(params, "torch")
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), **TOL[torch.bfloat16])


def test_nan_and_inf_grads():
    def grads(p, step, i):
        g = _grad(p, step, i)
        if step == 1:
            g.view(-1)[3] = float("nan")
        if step == 2:
            g.view(-1)[5], g.view(-1)[6] = float("inf"), float("-inf")
        return g

    _compare([_randn(50), _randn(3, 4, seed=1), _randn(2, 3, 4, seed=2)], grads=grads, equal_nan=True)


def test_grads_missing_on_some_steps():
    params = [_randn(4, 3), _randn(5, seed=1), _randn(2, 7, 3, seed=2)]
    _compare(params, grads=lambda p, s, i: None if (i + s) % 2 else _grad(p, s, i), steps=5)


def test_zero_size_param_refused_before_anything_changes():
    """torch's for-loop divides by numel ** 0.5: ZeroDivisionError, as torch's."""
    params = [_randn(4, 3).requires_grad_(), _randn(3, 0, 2).requires_grad_()]
    opt = optimlab.Adafactor(params)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMLAB_BACKEND", "cpp")
        for p in params:
            p.grad = torch.ones_like(p)
        before = params[0].detach().clone()
        with pytest.raises(ZeroDivisionError):
            opt.step()
    assert torch.equal(params[0].detach(), before)
    assert all(opt.state[p]["step"].item() == 0 for p in params)
    ref = torch.optim.Adafactor([torch.ones(3, 0, 2, requires_grad=True)], foreach=False)
    ref.param_groups[0]["params"][0].grad = torch.ones(3, 0, 2)
    with pytest.raises(ZeroDivisionError):
        ref.step()


@pytest.mark.parametrize("found", [0.0, 1.0])
def test_grad_scale_and_found_inf(found):
    """The fused contract: skipped entirely when found_inf != 0; else the grads are unscaled
    in place (left unscaled) and the step is the unscaled one."""
    shapes = [(6, 5), (7,), (2, 3, 4)]
    params = [_randn(*s, seed=i).requires_grad_() for i, s in enumerate(shapes)]
    ref = [p.detach().clone().requires_grad_() for p in params]
    opt, ref_opt = optimlab.Adafactor(params, weight_decay=0.1), torch.optim.Adafactor(ref, weight_decay=0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMLAB_BACKEND", "cpp")
        for step in range(3):
            grads = [_grad(p, step, i) for i, p in enumerate(params)]
            for p, r, g in zip(params, ref, grads):
                p.grad, r.grad = g * 8.0, g.clone()
            skip = step == 2 and found
            before = [p.detach().clone() for p in params]
            opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(found if step == 2 else 0.0)
            opt.step()
            if skip:
                assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
                assert all(opt.state[p]["step"].item() == 2 for p in params)
                continue
            ref_opt.step()
            for p, r, g in zip(params, ref, grads):
                torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # unscaled in place
                torch.testing.assert_close(p.detach(), r.detach(), **TOL[torch.float64])


def test_version_counter_bumped():
    p = _randn(4, 3).requires_grad_()
    opt = optimlab.Adafactor([p])
    p.grad = torch.ones_like(p)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTIMLAB_BACKEND", "cpp")
        before = p._version
        opt.step()
    assert p._version > before
