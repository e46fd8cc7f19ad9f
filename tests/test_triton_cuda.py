"""The Triton backend on a real GPU (skipped without CUDA; CI has none).

Run on a CUDA machine with ``python -m pytest -q tests/test_triton_cuda.py`` (and
``python -m optimlab.selfcheck --device cuda`` first). What the CPU interpreter cannot
show: compiled kernels, 64-bit offsets, several devices, CUDA graphs.
"""

import math

import pytest
import torch

import optimlab
from optimlab import selfcheck

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_selfcheck_triton_on_cuda():
    results = selfcheck.run_checks("cuda", quick=False, backends=["triton"])
    failed = [r for r in results if r.status == "FAIL"]
    assert results and not failed, "\n".join(map(str, failed))
    assert any(r.case == "cuda graph capture" and r.status == "ok" for r in results)


def test_tensor_above_2_31_elements_bf16():
    n = 2**31 + 4096
    free, _ = torch.cuda.mem_get_info()
    if free < 6 * n * 2:
        pytest.skip("needs about 26 GB of free GPU memory")
    def two_steps(numel, **kw):
        p = torch.nn.Parameter(torch.zeros(numel, dtype=torch.bfloat16, device="cuda"))
        p.grad = torch.ones_like(p)
        opt = optimlab.SGD([p], lr=0.5, momentum=0.9, **kw)
        opt.step()
        opt.step()
        return p

    # every element gets the same update: the for-loop's on a small tensor
    expected = two_steps(8, foreach=False)[0].item()
    p = two_steps(n, fused=True)
    for i in (0, 2**31 - 1, 2**31, 2**31 + 17, n - 1):
        assert p[i].item() == expected, i
    assert torch.all(p == expected).item()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("spread", [False, True])
def test_params_off_the_current_device(spread):
    devices = ["cuda:1", "cuda:0"] if spread else ["cuda:1", "cuda:1"]
    torch.manual_seed(0)
    data = [torch.randn(1000 + i) for i in range(4)]

    def run(**kw):
        params = [torch.nn.Parameter(d.to(devices[i % 2])) for i, d in enumerate(data)]
        opt = optimlab.Adam(params, lr=0.1, **kw)
        with torch.cuda.device(0):  # the current device is not (all) the params' device
            for _ in range(3):
                for p in params:
                    p.grad = p.detach().sin()
                opt.step()
        torch.cuda.synchronize()
        return [p.detach().cpu() for p in params]

    for a, b in zip(run(fused=True), run(foreach=True)):
        torch.testing.assert_close(a, b, rtol=5e-5, atol=1e-6)


def test_sgd_fused_first_step_overflow_leaves_no_bad_momentum():
    def run(**kw):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(257, device="cuda"))
        opt = optimlab.SGD([p], lr=0.1, momentum=0.9, **kw)
        scaler = torch.amp.GradScaler("cuda")
        for k in range(4):
            opt.zero_grad()
            scaler.scale((p * p).sum()).backward()
            if k == 0:
                p.grad[3] = math.inf  # the first step overflows and is skipped
            scaler.step(opt)
            scaler.update()
        return p.detach().cpu(), opt.state[p].get("momentum_buffer")

    (p_fused, buf_fused), (p_ref, buf_ref) = run(fused=True), run(foreach=False)
    assert torch.isfinite(p_fused).all()
    torch.testing.assert_close(p_fused, p_ref, rtol=5e-5, atol=1e-6)
    torch.testing.assert_close(buf_fused.cpu(), buf_ref.cpu(), rtol=5e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_capturable_step_in_a_cuda_graph(name):
    result = selfcheck._check_graph_capture(name, "triton", "cuda")
    assert result.status == "ok", result


@pytest.mark.parametrize("mode", ["kahan", "stochastic"])
def test_low_precision_write_same_bits_on_cuda_and_cpu(mode):
    """The low-precision write-back: Triton on the GPU gives the bits of the C++ kernel on the
    CPU and of the torch reference, for the same float32 results, seed and step."""
    from optimlab import low_precision
    from optimlab.kernels import cpu
    from optimlab.kernels.triton import low_precision as triton_lp

    gen = torch.Generator().manual_seed(0)
    p = torch.randn(70001, generator=gen).to(torch.bfloat16)
    new = p.float() + torch.randn(70001, generator=gen) * 1e-3  # updates below half an ulp too
    comp = (torch.randn(70001, generator=gen) * 1e-4).to(torch.bfloat16)
    seed, step = 2**40 + 7, 3
    ref_p, ref_c = p.clone(), comp.clone()
    if mode == "kahan":
        low_precision.kahan_write(ref_p, ref_c, new)
    else:
        ref_p.copy_(low_precision.stochastic_round(new, seed, torch.arange(70001), step))
    code = triton_lp.KAHAN if mode == "kahan" else triton_lp.STOCHASTIC
    cpu_p, cpu_c = p.clone(), comp.clone()
    cpu.load().lp_write([cpu_p], [new], [cpu_c] if mode == "kahan" else [], code, [seed], [step], [0])
    gpu_p, gpu_c = p.cuda(), comp.cuda()
    triton_lp.write(gpu_p, new.cuda(), gpu_c if mode == "kahan" else None, code, seed, step)
    torch.cuda.synchronize()
    for a, b in ((cpu_p, ref_p), (gpu_p.cpu(), ref_p), (cpu_c, ref_c), (gpu_c.cpu(), ref_c)):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


@pytest.mark.parametrize("name", ["Adam", "SGD", "RMSprop", "Adafactor", "Muon"])
def test_compiled_step_holds_the_operator_on_cuda(name, monkeypatch):
    """torch.compile(opt.step) with fused=True (Triton): the step is the CUDA
    implementation of ``optimlab::triton_<algorithm>_`` inside the graph. Dynamo makes every
    CUDA param group capturable on its first compiled step (as for torch.optim), so the
    reference is the eager step with capturable=True (step scalars from float32 counters on
    the device); the for-loop differs from it by those scalars only."""
    from torch._dynamo.utils import counters

    def train(compiled, **kw):
        torch._dynamo.reset()
        counters.clear()
        gen = torch.Generator(device="cuda").manual_seed(0)
        shapes = [(64, 32), (32, 48)] if name == "Muon" else [(64, 32), (48,)]
        ps = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=gen)) for s in shapes]
        opt = getattr(optimlab, name)(ps, lr=0.01, **kw)
        step = torch.compile(opt.step, backend="aot_eager") if compiled else opt.step
        for _ in range(5):
            for p in ps:
                p.grad = torch.randn(p.shape, device="cuda", generator=gen)
            step()
        return opt, [p.detach().clone() for p in ps]

    monkeypatch.setenv("OPTIMLAB_BACKEND", "triton")
    capturable = {} if name in ("SGD", "Muon", "Adafactor") else {"capturable": True}
    opt, compiled = train(True)
    assert {c.name for c in opt.backends()} == {"triton"}
    # (optimlab's base class: one graph break around the step, as torch.optim's)
    assert sum(counters["graph_break"].values()) <= 1, dict(counters["graph_break"])
    _, eager = train(False, **capturable)
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)


def test_make_fx_records_the_operator_on_cuda(monkeypatch):
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setenv("OPTIMLAB_BACKEND", "triton")
    ps = [torch.nn.Parameter(torch.randn(64, 32, device="cuda"))]
    opt = optimlab.AdamW(ps, lr=0.01)
    ps[0].grad = torch.randn_like(ps[0])
    opt.step()

    def step(params, grads):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    gm = make_fx(step)(ps, [torch.randn_like(ps[0])])
    called = [str(n.target) for n in gm.graph.nodes if str(n.target).startswith("optimlab.")]
    assert called == ["optimlab.triton_adam_.default"], gm.code
