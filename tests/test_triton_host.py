"""The Triton backend's host side (issue 13): the per-step input check, launches per
device, AMP-skipped SGD steps, compile options, specializations, CUDA-graph capture,
ASGD without host syncs, table streams. No GPU: kernels run in Triton's interpreter, or
are replaced by a stub that records its launches; CUDA-only behaviour is simulated."""

from __future__ import annotations

import contextlib
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import sys  # noqa: E402
import types  # noqa: E402

import pytest  # noqa: E402

triton = pytest.importorskip("triton")

import torch  # noqa: E402

import optimlab  # noqa: E402
import optimlab.kernels.triton as ot  # noqa: E402
from optimlab import _dispatch  # noqa: E402
from optimlab.kernels.triton import _host, _launcher  # noqa: E402
from helpers import random_grads  # noqa: E402

FAMILIES = ("adam_family", "sgd_family", "adagrad_family", "matrix_family")




def _close(ours, ref, o_opt, r_opt, **tol):
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), **tol)
    so, sr = o_opt.state_dict()["state"], r_opt.state_dict()["state"]
    assert so.keys() == sr.keys()
    for k in sr:
        for key, v in sr[k].items():
            if torch.is_tensor(v):
                torch.testing.assert_close(so[k][key], v, **tol, msg=lambda m: f"{k}/{key}: {m}")


class _Stub:
    """Stands for a ``@triton.jit`` kernel: records launches (grid, args, kwargs, and the
    device made current by ``current``) and warm-ups; ``fail`` makes warm-ups raise."""

    def __init__(self, name, current=None):
        self.__name__ = name
        self.launches, self.warmups = [], []
        self.current = current
        self.fail = False

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            cur = self.current[0] if self.current is not None else None
            self.launches.append(types.SimpleNamespace(grid=grid, args=args, kwargs=kwargs, current=cur))
        return run

    def warmup(self, *args, grid, **kwargs):
        if self.fail:
            raise ValueError("simulated compile error")
        self.warmups.append(types.SimpleNamespace(grid=grid, args=args, kwargs=kwargs))


def _stub_all_kernels(monkeypatch) -> list[_Stub]:
    import importlib

    stubs = []
    for fam in FAMILIES:
        mod = importlib.import_module(f"optimlab.kernels.triton.{fam}")
        for name, v in list(vars(mod).items()):
            if name.endswith("_kernel") and hasattr(v, "warmup"):
                stub = _Stub(name)
                monkeypatch.setattr(mod, name, stub)
                stubs.append(stub)
    return stubs


# ---- 1. the per-step input check ------------------------------------------------------------
def test_check_builds_no_message_when_inputs_are_fine(monkeypatch):
    """check_group runs on every step: with nothing wrong it must not look a parameter's
    name up (param_name scans the group: quadratic over a step) nor build messages."""
    calls = []
    real = _dispatch.param_name
    monkeypatch.setattr(_dispatch, "param_name", lambda g, i: calls.append(i) or real(g, i))
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(64)]
    grads = [torch.zeros(2) for _ in params]
    for p, g in zip(params, grads):
        p.grad = g
    group = {"params": params}
    ot.check_group("adam", group, params, grads)
    ot.check_group("sgd", group, params, [g.to_sparse() for g in grads], sparse_ok=True)
    assert calls == []
    # a bad input is still reported, naming the right parameter (looked up once)
    bad = list(grads)
    bad[40] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"parameter 40 of its param group: its grad \(dtype"):
        ot.check_group("adam", group, params, bad)
    assert calls == [40]
    with pytest.raises(RuntimeError, match="parameter 7 of its param group has a sparse grad"):
        ot.check_group("adam", group, params, grads[:7] + [grads[7].to_sparse()] + grads[8:])


def test_check_step_end_to_end_no_param_name(triton_env, monkeypatch):
    calls = []
    monkeypatch.setattr(_dispatch, "param_name", lambda g, i: calls.append(i) or "?")
    ps = [torch.nn.Parameter(torch.randn(3)) for _ in range(5)]
    opt = optimlab.Adam(ps)
    for p in ps:
        p.grad = torch.randn(3)
    opt.step()
    assert calls == []


def _fake(device, dtype=torch.float32, shape=(3,)):
    """What check_group reads of a tensor, on any device."""
    d = torch.device(device)
    return types.SimpleNamespace(device=d, dtype=dtype, shape=torch.Size(shape), is_sparse=False, grad=True,
                                 is_cpu=d.type == "cpu", is_cuda=d.type == "cuda",
                                 get_device=lambda: -1 if d.index is None else d.index)


def test_check_accepts_a_group_over_several_gpus(monkeypatch):
    """Params of one group on several GPUs: accepted (one launch per device); a grad on
    another device than its param is still refused."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ps = [_fake("cuda:0"), _fake("cuda:1"), _fake("cuda:0")]
    ot.check_group("adam", {"params": ps}, ps, [_fake("cuda:0"), _fake("cuda:1"), _fake("cuda:0")])
    with pytest.raises(RuntimeError, match="parameter 1 of its param group is on cuda:1 but its grad is on cuda:0"):
        ot.check_group("adam", {"params": ps}, ps, [_fake("cuda:0"), _fake("cuda:0"), _fake("cuda:0")])
    with pytest.raises(RuntimeError, match="parameter 2 of its param group is a CPU tensor"):
        ps2 = ps[:2] + [_fake("cpu")]
        ot.check_group("adam", {"params": ps2}, ps2, ps2)


def test_check_refuses_cuda_tensors_under_the_interpreter():
    """The interpreter reads the launch table's addresses as host memory: a CUDA tensor
    there would be read from a device address on the host. Refused."""
    ps = [_fake("cuda:0")]
    with pytest.raises(RuntimeError, match="parameter 0 of its param group is on cuda:0 but TRITON_INTERPRET=1"):
        ot.check_group("adam", {"params": ps}, ps, ps)


# ---- 2. params on several devices ----------------------------------------------------------
def test_one_launch_per_device_under_its_guard(monkeypatch):
    """A group spread over two devices: one launch per device, each inside that device's
    guard (so Triton uses it and its current stream), with its own tables on that device
    and its own tensors' per-tensor scalars. ("meta" stands for a second GPU here.)"""
    current = [None]
    entered = []

    @contextlib.contextmanager
    def guard(device):
        prev, current[0] = current[0], device
        entered.append(device)
        try:
            yield
        finally:
            current[0] = prev

    monkeypatch.setattr(_launcher, "_device_guard", guard)
    monkeypatch.setattr(_launcher, "_to_device", lambda host, device: host.to(device))
    stub = _Stub("_k", current)
    params = [torch.zeros(3), torch.zeros(4, device="meta"), torch.zeros(5), torch.zeros(2, device="meta")]
    grads = [torch.zeros_like(p) for p in params]
    _launcher.launch(stub, [params, grads], written=(0,), group_scalars=[0.5], columns=[[1.0, 2.0, 3.0, 4.0]])
    assert len(stub.launches) == 2
    seen = set()
    for launch in stub.launches:
        itab, stab, n_tensors, p_ref = launch.args[0], launch.args[1], launch.args[4], launch.args[6]
        dev = p_ref.device
        seen.add(dev.type)
        assert launch.current == dev  # launched under its own device's guard
        assert itab.device == dev and stab.device == dev
        assert n_tensors == 2
        if dev.type == "cpu":
            assert stab.tolist() == [0.5, 1.0, 3.0]
            assert itab[:4].tolist() == [params[0].data_ptr(), params[2].data_ptr(),
                                         grads[0].data_ptr(), grads[2].data_ptr()]
    assert seen == {"cpu", "meta"}
    assert {d.type for d in entered} == {"cpu", "meta"}


def test_device_guard_is_torch_cuda_device():
    g = _launcher._device_guard(torch.device("cuda", 1))
    assert isinstance(g, torch.cuda.device) and g.idx == 1
    assert isinstance(_launcher._device_guard(torch.device("cpu")), contextlib.nullcontext)


def test_per_device_copies_once_per_device():
    x = torch.tensor(2.0)
    ts = [torch.zeros(()), torch.zeros((), device="meta"), torch.zeros(())]
    out = _host.per_device(x, ts, torch.float64)
    assert [o.device.type for o in out] == ["cpu", "meta", "cpu"]
    assert out[0] is out[2] and out[0].dtype == torch.float64
    same = _host.per_device(x, [ts[0], ts[2]])
    assert same[0] is same[1]


# ---- 3. SGD: a first step AMP skips ---------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(dampening=0.3), dict(nesterov=True)])
def test_sgd_amp_skipped_first_step_leaves_no_momentum_buffer(kw, triton_env, monkeypatch):
    """GradScaler finds an inf on the first step: the step is skipped, so no momentum
    buffer may be left behind (torch's for-loop does not step at all); the next good step
    is the reference's first. (Fresh memory is made NaN, as uninitialised memory can be.)"""
    real_empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: real_empty_like(*a, **k).fill_(float("nan")))
    kw = dict(lr=0.1, momentum=0.9, **kw)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 3, generator=gen, dtype=torch.float64),
               torch.randn(5, generator=gen, dtype=torch.float64)]
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.clone()) for t in tensors]
    o_opt, r_opt = optimlab.SGD(ours, **kw), torch.optim.SGD(ref, **kw, foreach=False)
    for p, g in zip(ours, random_grads(ours, 0)):
        p.grad = g * 8
    o_opt.grad_scale, o_opt.found_inf = torch.tensor(8.0), torch.ones(())
    o_opt.step()
    del o_opt.grad_scale, o_opt.found_inf
    for p, t in zip(ours, tensors):
        assert torch.equal(p.detach(), t)
    assert all(o_opt.state.get(p, {}).get("momentum_buffer") is None for p in ours)
    for step in (1, 2):
        for p, g in zip(ours, random_grads(ours, step)):
            p.grad = g * 8
        for p, g in zip(ref, random_grads(ref, step)):
            p.grad = g
        o_opt.grad_scale, o_opt.found_inf = torch.tensor(8.0), torch.zeros(())
        o_opt.step()
        del o_opt.grad_scale, o_opt.found_inf
        r_opt.step()
        _close(ours, ref, o_opt, r_opt, rtol=1e-12, atol=1e-14)


# ---- 4. compile options -----------------------------------------------------------------------
def _run_each_optimizer():
    """One step of every algorithm with a triton kernel (kernels stubbed by the caller)."""
    gen = torch.Generator().manual_seed(0)
    dense = {
        "Adam": dict(amsgrad=True), "AdamW": {}, "SGD": dict(momentum=0.9), "Adagrad": {},
        "RMSprop": dict(momentum=0.5, centered=True), "Adadelta": {}, "Adamax": {}, "ASGD": {},
        "NAdam": {}, "RAdam": {}, "Rprop": {}, "Adafactor": {}, "Muon": {},
    }
    ran = []
    for name, kw in dense.items():
        shapes = [(4, 3), (3, 4)] if name == "Muon" else [(4, 3), (5,)]
        ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        opt = getattr(optimlab, name)(ps, **kw)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        ran.append(name)
    p = torch.nn.Parameter(torch.randn(6, 3, generator=gen))
    opt = optimlab.SparseAdam([p])
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 4]]), torch.randn(2, 3, generator=gen), (6, 3))
    opt.step()
    return ran + ["SparseAdam"]


def test_every_launch_disables_fp_fusion(triton_env, monkeypatch):
    """Every launch and warm-up passes enable_fp_fusion=False: rounding must not depend on
    Triton's default (which contracts a*b+c into an fma unless told otherwise)."""
    stubs = _stub_all_kernels(monkeypatch)
    monkeypatch.setattr(_launcher, "interpreting", lambda: False)  # warm-ups run too
    monkeypatch.setattr(_launcher, "_COMPILED", set())
    _run_each_optimizer()
    launched = [s for s in stubs if s.launches]
    assert len(launched) >= 14
    for s in stubs:
        for call in s.launches + s.warmups:
            assert call.kwargs.get("enable_fp_fusion") is False, s.__name__
            assert call.kwargs.get("num_warps") == _launcher.NUM_WARPS
        assert len(s.warmups) >= (1 if s.launches else 0), s.__name__


# ---- 7. 128-bit loads: the kernels are told when every address and numel is aligned --------
def test_aligned_flag_follows_the_table(monkeypatch):
    """``ALIGNED`` (which lets the compiler use 128-bit loads, checked in the PTX by
    ``_aot_check``) is passed True only when every address of the launch is a multiple of
    16 bytes and every numel of 8 elements; one view at an odd offset or one odd numel
    makes the whole launch scalar, never wrong."""
    monkeypatch.setattr(_launcher, "_TABLE_CACHE", type(_launcher._TABLE_CACHE)())
    stub = _Stub("_k")

    def flag(params):
        _launcher.launch(stub, [params, [torch.zeros_like(p) for p in params]], written=(0,))
        return stub.launches[-1].kwargs["ALIGNED"]

    assert flag([torch.zeros(64), torch.zeros(8, 16)]) is True
    assert flag([torch.zeros(64, dtype=torch.bfloat16)]) is True
    base = torch.zeros(80)
    assert flag([torch.zeros(64), base[4:68]]) is True  # 16 bytes in: still aligned
    assert flag([torch.zeros(64), base[1:65]]) is False  # a view 4 bytes in
    assert flag([torch.zeros(64), torch.zeros(12)]) is False  # 12 elements
    assert _launcher.aligned([0, 16, 4096], [8, 1 << 20], 4096)
    assert not _launcher.aligned([16], [8], 12)  # chunks must start aligned too


# ---- 6. specializations are compiled inside the compile-error fallback ------------------------
def test_new_specialization_compiles_before_any_launch(monkeypatch):
    """Triton compiles one kernel per specialization of the arguments (n_tensors == 1, an
    address not 16-byte aligned...). A specialization first seen by a later step must be
    compiled by the warm-up pass, where a failure raises KernelCompileError before
    anything was launched, not by the launch."""
    monkeypatch.setattr(_launcher, "interpreting", lambda: False)
    monkeypatch.setattr(_launcher, "_COMPILED", set())
    stub = _Stub("_k")
    three = [torch.zeros(3) for _ in range(3)]
    _launcher.launch(stub, [three, [torch.zeros(3) for _ in three]], written=(0,))
    _launcher.launch(stub, [three, [torch.zeros(3) for _ in three]], written=(0,))
    assert len(stub.warmups) == 1 and len(stub.launches) == 2
    stub.fail = True
    one = [torch.zeros(3)]
    with pytest.raises(ot.KernelCompileError, match="simulated compile error"):
        _launcher.launch(stub, [one, [torch.zeros(3)]], written=(0,))
    assert len(stub.launches) == 2  # nothing launched
    # an unaligned param (a view at an odd offset): another specialization
    base = torch.zeros(10)
    with pytest.raises(ot.KernelCompileError):
        _launcher.launch(stub, [[base[1:4], base[5:8]], [torch.zeros(3), torch.zeros(3)]], written=(0,))
    assert len(stub.launches) == 2
    # while a CUDA graph is captured, a kernel not compiled before is refused, not compiled
    stub.fail = False
    grads = [torch.zeros(3) for _ in three]
    _launcher.launch(stub, [three, grads], written=(0,))
    assert len(stub.launches) == 3
    monkeypatch.setattr(_launcher, "_COMPILED", set())  # as if this variant were new
    _simulate_capture(monkeypatch)
    with pytest.raises(_launcher.CaptureError, match="not compiled before capture"):
        _launcher.launch(stub, [three, grads], written=(0,))
    assert len(stub.launches) == 3 and len(stub.warmups) == 1


# ---- 5. CUDA-graph capture ------------------------------------------------------------------
def _simulate_capture(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def _count_host_to_device(monkeypatch):
    """Counts what a capturing step must not do: pin memory, or build a tensor from host
    values in the triton backend's modules (tables, index tensors)."""
    counts = {"pin_memory": 0, "torch.tensor": 0}
    real_tensor = torch.tensor

    def tensor(*a, **k):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("optimlab.kernels.triton"):
            counts["torch.tensor"] += 1
        return real_tensor(*a, **k)

    real_pin = torch.Tensor.pin_memory

    def pin(self, *a, **k):
        counts["pin_memory"] += 1
        return real_pin(self, *a, **k)

    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    return counts


CAPTURE_CASES = [
    ("Adam", dict(lr=0.01, capturable=True, amsgrad=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)),
    ("RMSprop", dict(lr=0.01, capturable=True, centered=True, momentum=0.5)),
    ("ASGD", dict(lr=0.05, t0=1, capturable=True)),
    ("NAdam", dict(lr=0.01, capturable=True)),
]


@pytest.mark.parametrize("name, kw", CAPTURE_CASES, ids=[c[0] for c in CAPTURE_CASES])
def test_capturing_step_copies_nothing_from_the_host(name, kw, triton_env, monkeypatch):
    """A step while a CUDA graph is captured (simulated) after warm-up steps: no pinned
    memory, no tensor built from host values (no new table, no scalar table copied, no
    index tensor for a group of mixed dtypes); the step is still right. A step whose
    launch table would have to be built during capture is refused, with nothing updated."""
    for mod in list(sys.modules.values()):  # CPU tensors stand for CUDA ones here
        if getattr(mod, "__name__", "").startswith("optimlab") and hasattr(mod, "_get_capturable_supported_devices"):
            monkeypatch.setattr(mod, "_get_capturable_supported_devices", lambda supports_xla=True: ["cpu", "cuda"])
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen),
               torch.randn(3, generator=gen, dtype=torch.float64)]  # two dtypes: two launches
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref_kw = {k: v for k, v in kw.items() if k != "capturable"}
    o_opt, r_opt = getattr(optimlab, name)(ours, **kw), getattr(torch.optim, name)(ref, **ref_kw, foreach=False)
    grads = [random_grads(ours, s) for s in range(3)]
    for step in range(2):  # warm-up, outside capture
        for p, q, g in zip(ours, ref, grads[step]):
            p.grad, q.grad = g.clone(), g.clone()
        o_opt.step()
        r_opt.step()
    counts = _count_host_to_device(monkeypatch)
    with monkeypatch.context() as m:
        _simulate_capture(m)
        for p, q, g in zip(ours, ref, grads[2]):
            p.grad.copy_(g)  # grads written in place: same addresses as in warm-up
            q.grad = g.clone()
        o_opt.step()
        assert counts == {"pin_memory": 0, "torch.tensor": 0}
        assert _launcher._CAPTURED_TABLES  # the graph's tables: never evicted
        r_opt.step()
        tol = dict(rtol=1e-5, atol=1e-7)
        _close(ours, ref, o_opt, r_opt, **tol)
        # grads at new addresses: the table would have to be built now: refused, nothing changed
        before = [p.detach().clone() for p in ours]
        state = {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()}
                 for k, v in o_opt.state_dict()["state"].items()}
        for p, g in zip(ours, grads[0]):
            p.grad = g.clone()
        with pytest.raises(RuntimeError, match="CUDA graph is being captured.*launch table"):
            o_opt.step()
        for a, b in zip(before, ours):
            assert torch.equal(a, b.detach())
        after = o_opt.state_dict()["state"]
        for k, v in state.items():
            for key, val in v.items():
                assert torch.equal(torch.as_tensor(after[k][key]), torch.as_tensor(val)), (k, key)


def test_sgd_capture_refuses_to_create_buffers_under_found_inf(triton_env, monkeypatch):
    """Whether a skipped step creates SGD's momentum buffers depends on found_inf, which
    capture cannot read: refused clearly (not a CUDA error from a sync)."""
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    opt = optimlab.SGD([p], lr=0.1, momentum=0.9)
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.zeros(())
    _simulate_capture(monkeypatch)
    with pytest.raises(RuntimeError, match="momentum buffers do not exist yet"):
        opt.step()


# ---- 6. ASGD: no host syncs with state on the device ---------------------------------------
def test_asgd_device_state_takes_no_host_values(triton_env, monkeypatch):
    """ASGD's eta, mu and step live on the param's device: the update reads them there
    (no .item(), no float()), with found_inf handled on the device too, and gives the
    for-loop's numbers. (The device path is forced on CPU tensors.)"""
    monkeypatch.setattr(_host, "on_device", lambda steps: True)
    kw = dict(lr=0.05, t0=1, weight_decay=0.1)
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen)]
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.clone()) for t in tensors]
    o_opt, r_opt = optimlab.ASGD(ours, **kw), torch.optim.ASGD(ref, **kw, foreach=False)
    host_reads = []
    real_item, real_float = torch.Tensor.item, torch.Tensor.__float__
    for seed, skip in ((0, False), (1, True), (2, False), (3, False)):
        for p, g in zip(ours, random_grads(ours, seed)):
            p.grad = g * 4
        for p, g in zip(ref, random_grads(ref, seed)):
            p.grad = g
        o_opt.grad_scale, o_opt.found_inf = torch.tensor(4.0), torch.tensor(float(skip))
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "item", lambda self: host_reads.append("item") or real_item(self))
            m.setattr(torch.Tensor, "__float__", lambda self: host_reads.append("float") or real_float(self))
            o_opt.step()
        del o_opt.grad_scale, o_opt.found_inf
        if not skip:
            r_opt.step()
        _close(ours, ref, o_opt, r_opt, rtol=1e-6, atol=1e-9)
    assert host_reads == []


# ---- 6. tables: streams, entries ------------------------------------------------------------
def test_table_used_on_another_stream_is_recorded(monkeypatch):
    """A cached table used on a stream other than the one it was made on is recorded with
    that stream (record_stream), so evicting it cannot free memory a launch still reads."""
    stream = ["s1"]
    monkeypatch.setattr(_launcher, "_current_stream", lambda device: stream[0])
    recorded = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: recorded.append((self, s)))
    stub = _Stub("_k")
    ps, gs = [torch.zeros(3), torch.zeros(2)], [torch.zeros(3), torch.zeros(2)]
    _launcher.launch(stub, [ps, gs], written=(0,))
    _launcher.launch(stub, [ps, gs], written=(0,))
    assert recorded == []
    stream[0] = "s2"
    _launcher.launch(stub, [ps, gs], written=(0,))
    _launcher.launch(stub, [ps, gs], written=(0,))
    assert len(recorded) == 1 and recorded[0][1] == "s2" and recorded[0][0] is stub.launches[-1].args[0]


def test_table_entries_match_a_loop_and_survive_newrandom_grads():
    for chunk in (1, 8, 64):
        numels = (1, 7, 8, 9, 100, 64, 65)
        tail, n = _launcher._entries(chunk, numels)
        ent_t = [ti for ti, k in enumerate(numels) for _ in range(0, k, chunk)]
        ent_s = [s for k in numels for s in range(0, k, chunk)]
        assert n == len(ent_t)
        assert tail.tolist() == list(numels) + ent_t + ent_s
    ps = [torch.zeros(20), torch.zeros(3)]
    (b1,) = _launcher.buckets([ps, [torch.zeros(20), torch.zeros(3)]])
    (b2,) = _launcher.buckets([ps, [torch.zeros(20), torch.zeros(3)]])
    t1, _ = _launcher._index_table(b1, 8, torch.device("cpu"))
    cached = dict(_launcher._ENTRY_CACHE)
    t2, _ = _launcher._index_table(b2, 8, torch.device("cpu"))  # new grad addresses: a new table
    assert t1 is not t2 and torch.equal(t1[4:], t2[4:]) and t1[2:4].tolist() != t2[2:4].tolist()
    assert dict(_launcher._ENTRY_CACHE) == cached  # the entry rows were reused


def test_muon_amp_on_the_device(triton_env, monkeypatch):
    """Muon under GradScaler: unscaling and skipping in its kernels, no host read of
    found_inf; the numbers of torch's Muon on unscaled grads, skipped steps leaving
    everything as it was."""
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(2)] + \
        [torch.randn(3, 5, generator=gen, dtype=torch.float64)]
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.clone()) for t in tensors]
    o_opt, r_opt = optimlab.Muon(ours, lr=0.02), torch.optim.Muon(ref, lr=0.02)
    host_reads = []
    real_item, real_float = torch.Tensor.item, torch.Tensor.__float__
    for seed, skip in ((0, False), (1, True), (2, False)):
        for p, g in zip(ours, random_grads(ours, seed)):
            p.grad = g * 16
        for p, g in zip(ref, random_grads(ref, seed)):
            p.grad = g
        before = [p.detach().clone() for p in ours]
        bufs = [o_opt.state[p]["momentum_buffer"].clone() for p in ours] if seed else None
        o_opt.grad_scale, o_opt.found_inf = torch.tensor(16.0), torch.tensor(float(skip))
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "item", lambda self: host_reads.append("item") or real_item(self))
            m.setattr(torch.Tensor, "__float__", lambda self: host_reads.append("float") or real_float(self))
            o_opt.step()
        del o_opt.grad_scale, o_opt.found_inf
        if skip:
            assert all(torch.equal(a, p.detach()) for a, p in zip(before, ours))
            assert all(torch.equal(b, o_opt.state[p]["momentum_buffer"]) for b, p in zip(bufs, ours))
            continue
        r_opt.step()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)  # unscaled in place
        _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)
    assert host_reads == []


# ---- 8. launch plans, step counters, one-value columns ---------------------------------------
def _table_of(launch, n_roles, n):
    """The launch table's address rows and numels, as Python lists."""
    itab = launch.args[0]
    return itab[:n_roles * n].tolist(), itab[n_roles * n:(n_roles + 1) * n].tolist()


def test_plan_tables_follow_addresses_and_numels(monkeypatch):
    """A launch site's plan knows the params and state by identity; it never hands a stale
    table: a grad at a new address, a state tensor replaced, a param added, a param moved
    by ``.data =``, a param given a slice of itself (same address, fewer elements) each give
    a table of this step's addresses and numels; with nothing changed, the same table."""
    monkeypatch.setattr(_launcher, "_PLANS", type(_launcher._PLANS)())
    stub = _Stub("_k")
    ps = [torch.zeros(5), torch.zeros(3)]
    state = [torch.zeros(5), torch.zeros(3)]
    grads = [torch.zeros(5), torch.zeros(3)]

    def step():
        _launcher.launch(stub, [ps, grads, state, None], written=(0, 2), persistent=(0, 2, 3))
        n = len(ps)
        ptrs, numels = _table_of(stub.launches[-1], 4, n)
        assert ptrs == [t.data_ptr() for t in ps + grads + state] + [0] * n
        assert numels == [p.numel() for p in ps]
        assert stub.launches[-1].args[4] == n
        return stub.launches[-1].args[0]

    t1 = step()
    assert step() is t1  # nothing changed: the plan's table, no new copy
    (plan,) = _launcher._PLANS.values()
    grads = [torch.zeros(5), torch.zeros(3)]
    assert step() is not t1  # grads at new addresses: a new table...
    assert list(_launcher._PLANS.values()) == [plan] and plan.alive  # ...from the same plan
    state[1] = torch.zeros(3)  # a state tensor replaced
    step()
    assert list(_launcher._PLANS.values()) != [plan]
    ps.append(torch.zeros(4))  # a param added
    state.append(torch.zeros(4))
    grads.append(torch.zeros(4))
    step()
    ps[0].data = torch.zeros(5)  # moved (same tensor object)
    step()
    ps[1].data = ps[1].data[:2]  # same object, same address, fewer elements
    state[1].data = state[1].data[:2]  # (its state alike: another shape is refused)
    grads[1] = torch.zeros(2)
    step()
    t2 = step()
    assert step() is t2


def test_plan_goes_to_the_general_path_for_other_layouts(monkeypatch):
    """What the plan does not cover (a grad with other strides, grads of two dtypes, a
    missing state tensor) goes through the general path, step after step, and the plan
    is used again once the inputs are usual."""
    monkeypatch.setattr(_launcher, "_PLANS", type(_launcher._PLANS)())
    stub = _Stub("_k")
    ps = [torch.zeros(4, 3), torch.zeros(3)]
    state = [torch.zeros(4, 3), torch.zeros(3)]

    def launches(grads, st=state):
        before = len(stub.launches)
        _launcher.launch(stub, [ps, grads, st], written=(0, 1, 2), persistent=(0, 2))
        return len(stub.launches) - before

    usual = [torch.zeros(4, 3), torch.zeros(3)]
    assert launches(usual) == 1
    g = torch.randn(3, 4).t()  # other strides: staged (the kernel reads a contiguous copy)
    assert launches([g, torch.zeros(3)]) == 1
    staged = stub.launches[-1]
    assert _table_of(staged, 3, 2)[0][2] != g.data_ptr()
    assert launches([torch.zeros(4, 3), torch.zeros(3, dtype=torch.float64)]) == 2  # two dtypes
    assert launches(usual) == 1
    assert _table_of(stub.launches[-1], 3, 2)[0] == [t.data_ptr() for t in ps + usual + state]


def test_plan_keeps_no_tensor_alive(monkeypatch):
    """A plan refers to params and state weakly (a dead one kills the plan) and to grads
    not at all: dropping an optimizer's tensors frees them, and a grad set to None is freed
    before the next step."""
    import gc
    import weakref

    monkeypatch.setattr(_launcher, "_PLANS", type(_launcher._PLANS)())
    stub = _Stub("_k")
    ps, gs, st = ([torch.zeros(3) for _ in range(2)] for _ in range(3))
    _launcher.launch(stub, [ps, gs, st], written=(0,), persistent=(0, 2))
    stub.launches.clear()  # (the stub keeps the launch arguments)
    (plan,) = _launcher._PLANS.values()
    grad_refs = [weakref.ref(t) for t in gs]
    del gs
    gc.collect()
    assert all(r() is None for r in grad_refs) and plan.alive
    refs = [weakref.ref(t) for t in ps + st]
    del ps, st
    gc.collect()
    assert all(r() is None for r in refs)
    assert not plan.alive


def test_same_columns_build_the_same_scalar_table():
    """A column of one value (``Same``) gives the table a per-tensor list gives, bit for
    bit, on the host and with device operations (capture), full or for a subset."""
    from optimlab.kernels.triton._host import Same

    cpu = torch.device("cpu")
    group = [1.0, -2.5]
    lists = [[0.5] * 4, [1.25, 2.0, -0.0, 3.0], [-0.0] * 4]
    same = [Same(0.5), lists[1], Same(-0.0)]
    bits = lambda t: t.view(torch.int64).tolist()  # noqa: E731
    for capturing in (False, True):
        for idx in ([0, 1, 2, 3], [1, 3]):
            ref = _launcher.scalar_table(group, lists, idx, cpu, capturing)
            assert bits(_launcher.scalar_table(group, same, idx, cpu, capturing)) == bits(ref)
            all_same = _launcher.scalar_table(group, [Same(0.5), Same(torch.tensor(-0.0))], idx, cpu, capturing)
            assert bits(all_same) == bits(_launcher.scalar_table(group, [lists[0], lists[2]], idx, cpu, capturing))
        t = torch.tensor([1.25, 2.0, -0.0, 3.0], dtype=torch.float32)
        assert bits(_launcher.scalar_table([], [Same(0.5), t], [0, 1, 2, 3], cpu, capturing)) == \
            bits(_launcher.scalar_table([], [lists[0], t.tolist()], [0, 1, 2, 3], cpu, capturing))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_step_counters_written_as_step_plus_one(dtype):
    """CPU step counters of one value are written ``v + 1`` with one foreach copy: the
    numbers ``step += 1`` gives, in every dtype (large counts included); counters of
    several values take the foreach add."""
    for v in (0.0, 1.0, 5.0, 255.0, 2048.0, 2.0**24 - 1, 2.0**24, 2.0**24 + 2, 3.0e7):
        steps = [torch.tensor(v, dtype=dtype) for _ in range(3)]
        ref = [s.clone() for s in steps]
        for r in ref:
            r += 1
        nxt = _host.next_steps(steps, False)
        assert nxt == float(steps[0]) + 1
        held = _host.commit_steps(steps, None, nxt, held=True)
        assert [s.item() for s in steps] == [r.item() for r in ref] and held == ref[0].item()
        assert all(s.dtype == dtype and s.shape == () for s in steps)
        again = [s.clone() for s in steps]
        _host.commit_steps(steps, None)  # read here
        for r in again:
            r += 1
        assert [s.item() for s in steps] == [r.item() for r in again]
    mixed = [torch.tensor(1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype)]
    assert _host.next_steps(mixed, False) == [2.0, 3.0]
    assert _host.commit_steps(mixed, None, [2.0, 3.0]) is None
    assert [s.item() for s in mixed] == [2.0, 3.0]


CATCH_UP_CASES = [
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("ASGD", dict(lr=0.05, t0=2, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("RAdam", dict(lr=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.5)),
]


@pytest.mark.parametrize("name, kw", CATCH_UP_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CATCH_UP_CASES)])
def test_params_at_different_step_counts(name, kw, triton_env):
    """A param without a grad on some steps falls behind on its step counter (and NAdam's
    mu_product, ASGD's eta and mu): a group's per-tensor values then differ, and each
    param still gets the for-loop's numbers (per distinct value, not one for the group)."""
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    ours = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = [torch.nn.Parameter(t.clone()) for t in tensors]
    o_opt, r_opt = getattr(optimlab, name)(ours, **kw), getattr(torch.optim, name)(ref, **kw, foreach=False)
    for step in range(5):
        for i, (p, q, g) in enumerate(zip(ours, ref, random_grads(ours, step))):
            skip = (i == 1 and step in (1, 2)) or (i == 2 and step == 0)
            p.grad, q.grad = (None, None) if skip else (g.clone(), g.clone())
        o_opt.step()
        r_opt.step()
        _close(ours, ref, o_opt, r_opt, rtol=1e-10, atol=1e-12)


def test_plan_pauses_where_tensors_are_new_every_step(monkeypatch):
    """Where the persistent tensors are new objects on every step (the real views of
    complex params), plans would be made and dropped on every step: after two unused
    plans in a row, the site goes without one for a while (the general path alone)."""
    monkeypatch.setattr(_launcher, "_PLANS", type(_launcher._PLANS)())
    stub = _Stub("_k")
    made = []
    real = _launcher._Plan.__init__
    monkeypatch.setattr(_launcher._Plan, "__init__", lambda self, *a: made.append(1) or real(self, *a))
    params = [torch.zeros(3, dtype=torch.complex64) for _ in range(2)]
    for step in range(10):
        ps = [torch.view_as_real(p) for p in params]  # new views: new objects
        _launcher.launch(stub, [ps, [torch.zeros(3, 2) for _ in ps]], written=(0,), persistent=(0,))
        assert _table_of(stub.launches[-1], 2, 2)[0][:2] == [p.data_ptr() for p in params]
    assert len(made) <= _launcher._PLAN_STRIKES + 1
    plain = [torch.zeros(3) for _ in range(2)]
    for step in range(3):
        _launcher.launch(stub, [plain, [torch.zeros(3) for _ in plain]], written=(0,), persistent=(0,))
    assert any(p.used for p in _launcher._PLANS.values() if isinstance(p, _launcher._Plan))


def test_state_of_another_shape_is_refused_before_any_launch(triton_env):
    """A state tensor smaller than its param (another model's checkpoint) would be written
    past its end by the kernel: refused, nothing changed."""
    p = torch.nn.Parameter(torch.randn(8))
    p.grad = torch.randn(8)
    opt = optimlab.Adam([p], lr=0.1)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(4)
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"role 2 .* shape \(4,\), its parameter \(8,\)"):
        opt.step()
    assert torch.equal(p.detach(), before)
