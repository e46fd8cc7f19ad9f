"""The Triton backend beyond the parity harness: layouts, multi-tensor launches, AMP,
reduced precision, selection and bad inputs. Kernels run in Triton's CPU interpreter."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

import torch  # noqa: E402
import triton.language as tl  # noqa: E402

import optimlab  # noqa: E402
import optimlab.kernels.triton as ot  # noqa: E402
from optimlab import _dispatch  # noqa: E402
from optimlab.kernels.triton import _helpers, _launcher  # noqa: E402
from helpers import random_grads  # noqa: E402

FUSED = ["Adam", "AdamW", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adamax", "ASGD", "NAdam",
         "RAdam", "Rprop"]
KWARGS = {
    "Adam": dict(lr=0.01, weight_decay=0.1, amsgrad=True),
    "AdamW": dict(lr=0.01),
    "SGD": dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1),
    "Adagrad": dict(lr=0.1, lr_decay=0.1, weight_decay=0.1),
    "RMSprop": dict(lr=0.01, centered=True, momentum=0.5),
    "Adadelta": dict(lr=0.5, weight_decay=0.1),
    "Adamax": dict(lr=0.01, weight_decay=0.1),
    "ASGD": dict(lr=0.05, t0=1, weight_decay=0.1),
    "NAdam": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "RAdam": dict(lr=0.01, weight_decay=0.1),
    "Rprop": dict(lr=0.05),
}




def _pair(name, tensors, **extra):
    """(optimlab on triton, torch for-loop) on independent copies of ``tensors``."""
    kw = {**KWARGS[name], **extra}
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.detach().clone()) for t in tensors]
    return ours, getattr(optimlab, name)(ours, **kw), ref, getattr(torch.optim, name)(ref, **kw, foreach=False)


def _step_both(ours, o_opt, ref, r_opt, seed):
    for p, g in zip(ours, random_grads(ours, seed)):
        p.grad = g.clone()
    for p, g in zip(ref, random_grads(ref, seed)):
        p.grad = g.clone()
    o_opt.step()
    r_opt.step()


def _close(ours, ref, o_opt, r_opt, **tol):
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    so, sr = o_opt.state_dict()["state"], r_opt.state_dict()["state"]
    assert so.keys() == sr.keys()
    for k in sr:
        for key, v in sr[k].items():
            if torch.is_tensor(v):
                torch.testing.assert_close(so[k][key], v, **tol, msg=lambda m: f"{k}/{key}: {m}")


# ---- layouts and multi-tensor launches ---------------------------------------------------
@pytest.mark.parametrize("name", FUSED)
def test_zero_size_noncontiguous_and_many_tensors(name, triton_env, monkeypatch):
    """One launch over 24 tensors of mixed sizes (up to three chunks each, with looping
    programs), zero-size tensors, a transposed (dense, permuted) and a strided
    (non-dense) param: same as torch's for-loop in float64, over two steps (the second
    with state from the first)."""
    monkeypatch.setattr(_launcher, "INTERPRET_BLOCK", 16)
    monkeypatch.setattr(_launcher, "INTERPRET_ITERS", 2)
    gen = torch.Generator().manual_seed(1)
    sizes = [int(s) for s in torch.randint(1, 90, (24,), generator=gen)]
    tensors = [torch.randn(n, generator=gen, dtype=torch.float64) for n in sizes]
    tensors += [torch.empty(0, dtype=torch.float64), torch.empty(3, 0, dtype=torch.float64)]
    ours, o_opt, ref, r_opt = _pair(name, tensors)
    # a permuted param and a strided view param (built after _pair: keep their layout)
    base = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    ours += [torch.nn.Parameter(base.clone().t()), torch.nn.Parameter(base.clone()[:, ::3])]
    assert not ours[-2].is_contiguous() and not ours[-1].is_contiguous()
    ref += [torch.nn.Parameter(base.clone().t()), torch.nn.Parameter(base.clone()[:, ::3])]
    kw = KWARGS[name]
    o_opt = getattr(optimlab, name)(ours, **kw)
    r_opt = getattr(torch.optim, name)(ref, **kw, foreach=False)
    for seed in range(2):
        _step_both(ours, o_opt, ref, r_opt, seed)
    assert {c.name for c in o_opt.backends()} == {"triton"}
    _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


def test_grad_with_other_strides(triton_env):
    """A grad whose strides differ from its (contiguous) param's is staged, not misread."""
    p = torch.randn(5, 7, dtype=torch.float64)
    ours, o_opt, ref, r_opt = _pair("Adam", [p])
    g = torch.randn(7, 5, dtype=torch.float64).t()
    ours[0].grad, ref[0].grad = g, g.contiguous()
    o_opt.step()
    r_opt.step()
    _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


def test_table_is_cached_and_entries_chunked(monkeypatch):
    monkeypatch.setattr(_launcher, "INTERPRET_BLOCK", 8)
    ts = [torch.zeros(20), torch.zeros(3), torch.zeros(0)]
    (b,) = _launcher.buckets([ts])
    assert b.indices == [0, 1]  # the empty tensor gets no entry
    t1, n1 = _launcher._index_table(b, 8, torch.device("cpu"))
    t2, _ = _launcher._index_table(b, 8, torch.device("cpu"))
    assert t1 is t2 and n1 == 4  # 3 chunks of the first tensor, 1 of the second
    assert t1.dtype == torch.int64 and t1[:2].tolist() == [ts[0].data_ptr(), ts[1].data_ptr()]


# ---- AMP ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FUSED)
def test_grad_scale_unscales_in_kernel(name, triton_env):
    """grad_scale: the kernel unscales (and writes the unscaled grads back, as torch's
    fused optimizers do); same result as the for-loop on unscaled grads."""
    tensors = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    ours, o_opt, ref, r_opt = _pair(name, tensors)
    scale = torch.tensor(1024.0)
    for seed in range(2):
        for p, g in zip(ours, random_grads(ours, seed)):
            p.grad = g * 1024.0
        for p, g in zip(ref, random_grads(ref, seed)):
            p.grad = g
        o_opt.grad_scale, o_opt.found_inf = scale, torch.zeros(())  # as GradScaler sets them
        o_opt.step()
        del o_opt.grad_scale, o_opt.found_inf
        r_opt.step()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)
    _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", FUSED)
def test_found_inf_skips_everything(name, triton_env):
    tensors = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    ours, o_opt, ref, r_opt = _pair(name, tensors)
    _step_both(ours, o_opt, ref, r_opt, 0)
    before = ([p.detach().clone() for p in ours],
              {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()}
               for k, v in o_opt.state_dict()["state"].items()})
    for p, g in zip(ours, random_grads(ours, 5)):
        p.grad = g
    o_opt.grad_scale, o_opt.found_inf = torch.tensor(8.0), torch.ones(())
    o_opt.step()
    del o_opt.grad_scale, o_opt.found_inf  # as GradScaler does after the step
    for a, b in zip(before[0], ours):
        assert torch.equal(a, b.detach())
    after = o_opt.state_dict()["state"]
    for k, v in before[1].items():
        for key, val in v.items():
            assert torch.equal(torch.as_tensor(after[k][key]), torch.as_tensor(val)), (k, key)
    # and the next good step continues in lockstep with the reference
    _step_both(ours, o_opt, ref, r_opt, 1)
    _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


def test_grad_scaler_end_to_end(triton_env):
    """torch.amp.GradScaler drives the fused step (grad_scale/found_inf attributes, which
    the base passes to fused backends)."""
    torch.manual_seed(0)
    w0 = torch.randn(8, 4)
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = optimlab.Adam([ours], lr=0.01)
    opt._step_supports_amp_scaling = True
    r_opt = torch.optim.Adam([ref], lr=0.01, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    x = torch.randn(16, 8)
    for it in range(4):
        opt.zero_grad()
        r_opt.zero_grad()
        loss = (x @ ours).square().mean()
        if it == 2:
            loss = loss * float("inf")  # this step must be skipped
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if it != 2:
            (x @ ref).square().mean().backward()
            r_opt.step()
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert opt.state[ours]["step"].item() == 3


# ---- precision ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", FUSED)
def test_low_precision_vs_fp32_reference(name, dtype, triton_env):
    """Params/grads/state in ``dtype``, math in fp32: close to the fp32 for-loop."""
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(6, 5, generator=gen), torch.randn(7, generator=gen)]
    ours = [torch.nn.Parameter(t.to(dtype)) for t in tensors]
    ref = [torch.nn.Parameter(t.to(dtype).float()) for t in tensors]
    o_opt = getattr(optimlab, name)(ours, **KWARGS[name])
    r_opt = getattr(torch.optim, name)(ref, **KWARGS[name], foreach=False)
    for seed in range(3):
        for p, g in zip(ours, random_grads(ours, seed)):
            p.grad = g.to(dtype)
        for p, g in zip(ref, random_grads(ours, seed)):
            p.grad = g.to(dtype).float()
        o_opt.step()
        r_opt.step()
        # the reference rounds its params to ``dtype`` as ours are stored
        with torch.no_grad():
            for p in ref:
                p.copy_(p.to(dtype).float())
            for st in r_opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        v.copy_(v.to(dtype).float())
    for p in ours:
        assert p.dtype == dtype
    for st in o_opt.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.dtype == dtype, k
    tol = dict(rtol=2e-2, atol=2e-2) if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-6)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach().float(), b.detach(), **tol)


def test_tensor_lr_and_capturable_tensor_path(triton_env):
    """Tensor lr, and step counters on the tensor path (capturable): same as the for-loop."""
    tensors = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    for kw in (dict(lr=torch.tensor(0.01)), dict(lr=torch.tensor(0.01), amsgrad=True, weight_decay=0.1,
                                                  decoupled_weight_decay=True)):
        ours, o_opt, ref, r_opt = _pair("Adam", tensors, **kw)
        for seed in range(3):
            _step_both(ours, o_opt, ref, r_opt, seed)
        _close(ours, ref, o_opt, r_opt, rtol=1e-6, atol=1e-9)


def test_tensor_path_scalars_match_host(monkeypatch, triton_env):
    """Step counters as tensors (the device path of fused/capturable) give the host result."""
    from optimlab.kernels.triton import _host

    tensors = [torch.randn(4, 3, dtype=torch.float64)]
    ours, o_opt, ref, r_opt = _pair("Adam", tensors, lr=0.01)
    monkeypatch.setattr(_host, "on_device", lambda steps: True)
    for seed in range(3):
        _step_both(ours, o_opt, ref, r_opt, seed)
    _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


# ---- selection, availability, fallback ---------------------------------------------------
def _cuda_like():
    return [types.SimpleNamespace(device=torch.device("cuda"), dtype=torch.float32, numel=lambda: 4)]


def _measured_triton():
    return {"cuda": {"device": "a GPU", "choices": {"adam": {"float32": "triton"}}}}


def test_selection(monkeypatch):
    monkeypatch.setattr(_dispatch, "measured_defaults", lambda: {})
    assert _dispatch.resolve("adam", {"fused": True}, _cuda_like()).name == "triton"
    # the default on CUDA is torch's (foreach) until a measured table for the device picks
    # triton: the kernels have not run on a GPU yet
    assert _dispatch.resolve("adam", {}, _cuda_like()).name == "foreach"
    monkeypatch.setattr(_dispatch, "measured_defaults", _measured_triton)
    # (a committed CUDA entry speaks only for a GPU of the name it was measured on)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_dispatch._measured, "device_name", lambda device: "a GPU")
    assert _dispatch.resolve("adam", {}, _cuda_like()).name == "triton"
    monkeypatch.setattr(_dispatch._measured, "device_name", lambda device: "another GPU")
    assert _dispatch.resolve("adam", {}, _cuda_like()).name == "foreach"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("OPTIMLAB_BACKEND", "triton")
    p = torch.nn.Parameter(torch.randn(3))
    assert optimlab.Adam([p]).backends()[0].name == "triton"


def test_triton_missing(monkeypatch):
    monkeypatch.setattr(_dispatch, "measured_defaults", lambda: {})
    monkeypatch.setattr(ot, "_availability", ["Triton is not installed (pip install 'optimlab[triton]')"])
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        _dispatch.resolve("adam", {"fused": True}, _cuda_like())
    monkeypatch.setattr(_dispatch, "measured_defaults", _measured_triton)
    assert _dispatch.resolve("adam", {}, _cuda_like()).name == "foreach"  # measured, not available


def test_registration_does_not_import_triton():
    # (torch itself may import triton; the kernel modules must not be imported: only the
    # table and the operators' definitions, which import no Triton)
    code = ("import sys, optimlab, optimlab.kernels.triton as t; "
            "assert {m for m in sys.modules if m.startswith('optimlab.kernels.triton.')} <= "
            "{'optimlab.kernels.triton._table', 'optimlab.kernels.triton._ops'}; "
            "assert 'triton' not in sys.modules; "
            "from optimlab import _dispatch; assert 'triton' in _dispatch.backends_of('adam')")
    subprocess.run([sys.executable, "-c", code], check=True)


def _compile_fails(*a, **k):
    raise ot.KernelCompileError("_adam_kernel: simulated")


def test_compile_failure_falls_back_on_default_path(monkeypatch):
    from optimlab.kernels.triton import adam_family

    monkeypatch.setattr(adam_family, "adam", _compile_fails)
    monkeypatch.setattr(_dispatch, "_warned", set())
    tensors = [torch.randn(4, 3, dtype=torch.float64)]
    ours, o_opt, ref, r_opt = _pair("Adam", tensors)
    update = _dispatch.kernel("adam", "triton")
    for p, g in zip(ours + ref, random_grads(ours, 0) * 2):
        p.grad = g
    group = o_opt.param_groups[0]
    st = {k: [o_opt.state[ours[0]].setdefault(k, v)] for k, v in o_opt._init_state(group, ours[0]).items()}
    with pytest.warns(UserWarning, match="falling back to the foreach backend"), torch.no_grad():
        update(group, ours, [ours[0].grad], st)
    r_opt.step()
    _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)
    monkeypatch.setenv("OPTIMLAB_BACKEND", "triton")  # explicit: raise instead
    with pytest.raises(RuntimeError, match="failed to compile"), torch.no_grad():
        update(group, ours, [ours[0].grad], st)


def test_compile_failure_fallback_initialises_new_momentum_buffers(monkeypatch):
    """SGD's first step with momentum: the buffers the Triton update creates (uninitialised,
    for its kernel to fill) are the fallback's to fill when the kernel fails to compile,
    in eager code and inside the operator (make_fx), as torch creates them (a copy of the
    decayed grad)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from optimlab.kernels.triton import sgd_family

    monkeypatch.setattr(sgd_family, "sgd", _compile_fails)
    monkeypatch.setattr(_dispatch, "_warned", set())
    for traced in (False, True):
        tensors = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
        ours, o_opt, ref, r_opt = _pair("SGD", tensors, momentum=0.9, weight_decay=0.1)
        for p, g in zip(ours + ref, random_grads(ours, 0) * 2):
            p.grad = g
        update = _dispatch.kernel("sgd", "triton")
        group = o_opt.param_groups[0]
        st = {"momentum_buffer": [None, None]}  # noqa: B023 (step runs within the iteration)
        grads = [p.grad for p in ours]

        def step(params, grads):
            update(group, params, grads, st)

        with pytest.warns(UserWarning, match="falling back"), torch.no_grad():
            if traced:  # the operator's implementation runs the fallback on its own list
                make_fx(step)(ours, grads)
            else:
                step(ours, grads)
        r_opt.step()
        for p, buf in zip(ref, st["momentum_buffer"]):
            torch.testing.assert_close(buf, r_opt.state[p]["momentum_buffer"], rtol=1e-12, atol=0)
        monkeypatch.setattr(_dispatch, "_warned", set())


# ---- bad inputs --------------------------------------------------------------------------
def test_params_on_two_devices_raise_before_any_update(triton_env):
    good = torch.nn.Parameter(torch.randn(3))
    good.grad = torch.randn(3)
    other = torch.nn.Parameter(torch.randn(3, device="meta"))
    other.grad = torch.randn(3, device="meta")
    opt = optimlab.Adam([{"params": [good, other]}])
    before = good.detach().clone()
    with pytest.raises(RuntimeError, match=r"parameter 1 of its param group is on meta"):
        opt.step()
    assert torch.equal(good.detach(), before)
    assert good not in opt.state  # checked at plan time: no state was even created


def test_named_param_in_error(triton_env):
    a = torch.nn.Parameter(torch.randn(3))
    a.grad = torch.randn(3)
    b = torch.nn.Parameter(torch.randn(3, device="meta"))
    b.grad = torch.randn(3, device="meta")
    opt = optimlab.SGD([("layer.weight", a), ("layer.bias", b)], lr=0.1)
    with pytest.raises(RuntimeError, match="parameter 'layer.bias'"):
        opt.step()


def test_unsupported_dtype_and_sparse_grad_errors():
    group = {"params": []}
    ip = torch.zeros(3, dtype=torch.int32)
    ip.grad = None
    with pytest.raises(RuntimeError, match="has dtype torch.int32"):
        ot.check_group("adam", group, [ip], [torch.zeros(3, dtype=torch.int32)])
    p = torch.zeros(3)
    with pytest.raises(RuntimeError, match="sparse grad; the fused kernel needs dense grads"):
        ot.check_group("rmsprop", group, [p], [torch.zeros(3).to_sparse()])
    with pytest.raises(RuntimeError, match="does not match the parameter"):
        ot.check_group("adam", group, [p], [torch.zeros(4)])


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ot.check_group("adam", {"params": []}, [torch.zeros(2)], [torch.zeros(2)])


def test_sparse_grads_go_through_the_for_loop(triton_env):
    """SGD/Adagrad accept sparse grads: those params take the for-loop, the rest the kernel."""
    dense = torch.randn(4, 3, dtype=torch.float64)
    table = torch.randn(6, 3, dtype=torch.float64)
    for name, kw in (("SGD", dict(lr=0.1, momentum=0.9)), ("Adagrad", dict(lr=0.1))):
        ours = [torch.nn.Parameter(dense.clone()), torch.nn.Parameter(table.clone())]
        ref = [torch.nn.Parameter(dense.clone()), torch.nn.Parameter(table.clone())]
        o_opt, r_opt = getattr(optimlab, name)(ours, **kw), getattr(torch.optim, name)(ref, **kw)
        for seed in range(2):
            g = random_grads(ours, seed)
            sg = torch.sparse_coo_tensor(torch.tensor([[0, 2, 2]]), torch.randn(3, 3, dtype=torch.float64), (6, 3))
            ours[0].grad, ref[0].grad = g[0].clone(), g[0].clone()
            ours[1].grad, ref[1].grad = sg.clone(), sg.clone()
            o_opt.step()
            r_opt.step()
        _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


# ---- the compiler (no GPU needed) --------------------------------------------------------
@pytest.mark.skipif(os.environ.get("OPTIMLAB_TRITON_AOT", "1") == "0", reason="disabled")
def test_kernels_compile_for_sm90():
    """Every kernel compiles to a cubin for sm_90 (what the interpreter cannot check).
    Runs in a subprocess without TRITON_INTERPRET; set OPTIMLAB_TRITON_AOT=0 to skip."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-m", "optimlab.kernels.triton._aot_check", "--quick"],
                         env=env, capture_output=True, text=True)
    if res.returncode != 0 and ("ptxas" in res.stderr and "No such file" in res.stderr):
        pytest.skip("this Triton install has no ptxas")
    assert res.returncode == 0, res.stderr[-4000:]
    assert "compiled" in res.stdout


# ---- SparseAdam, Adafactor, Muon -----------------------------------------------------------
def _sparse(idx, vals, shape):
    return torch.sparse_coo_tensor(torch.as_tensor(idx, dtype=torch.long), vals, shape)


def test_sparse_adam_rows(triton_env, monkeypatch):
    """Sparse grads fused: duplicate (uncoalesced) rows, an empty grad, two sparse dims,
    a transposed table, several chunks per grad; as torch's SparseAdam in float64."""
    monkeypatch.setattr(_launcher, "INTERPRET_BLOCK", 4)
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 3), (5, 4), (4, 5), (4, 3)]
    base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    base[3] = base[3].t().contiguous().t()  # a transposed (non-contiguous) table

    def grads(step):
        g = torch.Generator().manual_seed(10 + step)
        r = lambda *s: torch.randn(s, generator=g, dtype=torch.float64)  # noqa: E731
        return [
            _sparse([[0, 2, 2, 5]], r(4, 3), (6, 3)),  # row 2 twice
            _sparse([[]], r(0, 4), (5, 4)) if step == 1
            else _sparse([[4, 1]], r(2, 4), (5, 4)),
            _sparse([[0, 3, 1], [4, 0, 4]], r(3), (4, 5)),  # sparse_dim 2, scalar values
            _sparse([[3, 0]], r(2, 3), (4, 3)),
        ]

    for kw in (dict(lr=0.01), dict(lr=0.05, betas=(0.8, 0.9), maximize=True)):
        ours = [torch.nn.Parameter(t.clone()) for t in base]
        ref = [torch.nn.Parameter(t.clone()) for t in base]
        o_opt, r_opt = optimlab.SparseAdam(ours, **kw), torch.optim.SparseAdam(ref, **kw)
        for step in range(3):
            for p, q, g in zip(ours, ref, grads(step)):
                p.grad, q.grad = g.clone(), g.clone()
            o_opt.step()
            r_opt.step()
        assert {c.name for c in o_opt.backends()} == {"triton"}
        assert not ours[3].is_contiguous()
        _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)
        assert [o_opt.state[p]["step"] for p in ours] == [3] * 4


def test_adafactor_factored_shapes(triton_env, monkeypatch):
    """Factored params of 2, 3 and 4 dims (blocks of columns spanning matrices, rows
    beyond one tile, a tall and a wide matrix), 1-D and 0-D params, a grad with other
    strides, eps1=None taken from the first param's dtype: as torch's for-loop."""
    from optimlab.kernels.triton import matrix_family

    monkeypatch.setattr(matrix_family, "INTERPRET_RED_BLOCK", 4)
    monkeypatch.setattr(matrix_family, "INTERPRET_RED_TILE", 4)
    monkeypatch.setattr(_launcher, "INTERPRET_BLOCK", 8)
    gen = torch.Generator().manual_seed(2)
    shapes = [(11, 3), (2, 9), (3, 5, 3), (2, 2, 3, 2), (7,), ()]
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    for kw in (dict(), dict(lr=0.5, maximize=True, d=1.2, beta2_decay=-0.5, weight_decay=0.2),
               dict(eps=(1e-3, 1e-2), lr=torch.tensor(0.05))):
        ours = [torch.nn.Parameter(t.clone()) for t in tensors]
        ref = [torch.nn.Parameter(t.clone()) for t in tensors]
        o_opt = optimlab.Adafactor(ours, **kw)
        r_opt = torch.optim.Adafactor(ref, **kw, foreach=False)
        for seed in range(3):
            gs = random_grads(ours, seed)
            gs[0] = gs[0].t().contiguous().t()  # same values, transposed strides
            for p, q, g in zip(ours, ref, gs):
                p.grad, q.grad = g.clone(), g.contiguous()
            o_opt.step()
            r_opt.step()
        assert {c.name for c in o_opt.backends()} == {"triton"}
        _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


def test_adafactor_eps1_none_from_first_param(triton_env):
    """eps1=None: finfo(eps) of the group's first param (float32 here) for every param."""
    gen = torch.Generator().manual_seed(4)
    tensors = [torch.randn(3, 4, generator=gen), torch.randn(4, 2, generator=gen, dtype=torch.float64)]
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.clone()) for t in tensors]
    o_opt, r_opt = optimlab.Adafactor(ours), torch.optim.Adafactor(ref, foreach=False)
    for seed in range(2):
        for p, q, g in zip(ours, ref, random_grads(ours, seed)):
            g = g * 1e-5  # small grads: eps1 matters
            p.grad, q.grad = g.clone(), g.clone()
        o_opt.step()
        r_opt.step()
    torch.testing.assert_close(ours[1].detach(), ref[1].detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours[0].detach(), ref[0].detach(), rtol=1e-5, atol=1e-6)


def test_muon_batched_newton_schulz(triton_env, monkeypatch):
    """Same-shape matrices go through Newton–Schulz as one (k, m, n) batch (tall ones
    too); a lone shape takes the 2-D path. Every option: as torch's for-loop."""
    from optimlab import muon as muon_mod

    seen = []
    real = muon_mod.zeropower_via_newtonschulz

    def spy(x, *a):
        seen.append(tuple(x.shape))
        return real(x, *a)

    monkeypatch.setattr(muon_mod, "zeropower_via_newtonschulz", spy)
    gen = torch.Generator().manual_seed(3)
    shapes = [(4, 3), (5, 2), (4, 3), (2, 5), (5, 2), (4, 3)]
    tensors = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    for kw in (dict(), dict(nesterov=False, adjust_lr_fn="match_rms_adamw", lr=0.02),
               dict(momentum=0.0, weight_decay=0.0, ns_steps=3),
               dict(lr=torch.tensor(0.01), adjust_lr_fn="original", weight_decay=0.3)):
        ours = [torch.nn.Parameter(t.clone()) for t in tensors]
        ref = [torch.nn.Parameter(t.clone()) for t in tensors]
        o_opt, r_opt = optimlab.Muon(ours, **kw), torch.optim.Muon(ref, **kw)
        seen.clear()
        for seed in range(2):
            for p, q, g in zip(ours, ref, random_grads(ours, seed)):
                p.grad, q.grad = g.clone(), g.clone()
            o_opt.step()
            r_opt.step()
        assert sorted(seen[:3]) == sorted([(3, 4, 3), (2, 5, 2), (2, 5)])  # one step's calls
        _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


@triton.jit
def _store_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    _helpers.store(dst, offs, tl.load(src + offs, mask=mask), mask)


def test_bf16_store_rounds_to_nearest_even():
    """The kernels' bfloat16 stores (``_helpers.store``) round as torch does (ties to even,
    overflow to inf), in the interpreter too (whose own fp32 -> bf16 cast truncates)."""
    x = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 1.0 + 2**-8 + 2**-20,
                      3.4e38, float("inf"), float("-inf"), 1e-40, -0.0, float("nan")])
    for src in (x, x.double()):
        out = torch.empty_like(x, dtype=torch.bfloat16)
        _store_kernel[(1,)](src, out, x.numel(), BLOCK=16)
        assert torch.equal(out[:-1].view(torch.int16), src[:-1].bfloat16().view(torch.int16))
        assert out[-1].isnan()


def test_rmsprop_op_order_matches_torch(triton_env, monkeypatch):
    """RMSprop (centered, momentum, weight decay, maximize) in float32 is bit for bit torch's
    for-loop once the interpreter's square root is torch's. (torch's CPU float32 sqrt is
    not correctly rounded, ~1 element in 7 is 1 ulp off, while the kernel's is, as torch's
    CUDA sqrt: that is the only difference left; see docs/triton-backend.md.)"""
    np = pytest.importorskip("numpy")
    from triton.runtime import interpreter

    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or not hasattr(builder, "create_precise_sqrt"):
        pytest.skip("this Triton's interpreter has no sqrt hook to patch")

    def torch_sqrt(self, arg):
        return self.unary_op(arg, lambda a: torch.from_numpy(np.ascontiguousarray(a)).sqrt().numpy())

    monkeypatch.setattr(builder, "create_precise_sqrt", torch_sqrt)
    monkeypatch.setattr(builder, "create_sqrt", torch_sqrt)
    kw = dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.1, maximize=True)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(12, generator=gen), torch.randn(3, generator=gen)]
    ours, o_opt, ref, r_opt = _pair("RMSprop", tensors, **kw)
    for seed in range(3):
        _step_both(ours, o_opt, ref, r_opt, seed)
    _close(ours, ref, o_opt, r_opt, rtol=0, atol=0)
