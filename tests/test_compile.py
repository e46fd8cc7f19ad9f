"""``torch.compile`` of a training step that calls ``opt.step()`` (CPU; kept small: compiling is slow).

* forloop and foreach: a compiled training step (forward, backward, ``opt.step()``,
  ``zero_grad``) gives torch.optim's compiled numbers (and, up to float32 step
  scalars, the eager ones), step after step (``aot_eager``: Dynamo +
  AOTAutograd functionalization, the part that sees the optimizer's in-place updates;
  one case also through the default inductor backend); and ``opt.step()`` alone traces
  to a single graph (``fullgraph=True``), except where a graph break is documented in
  docs/support-matrix.md.
* cpp: each fused kernel is a ``torch.library`` operator (``optimlab::<algorithm>_``,
  optimlab/kernels/ops.py), so a compiled step holds it in the graph: ``opt.step()``
  traces to a single graph, and the compiled step gives the eager numbers (the operator
  computes its step-dependent scalars from the step counters when it runs). More in
  tests/test_fused_ops.py (every optimizer, compile counts against torch.optim's).
* triton: likewise each update is an operator (``optimlab::triton_<algorithm>_``,
  optimlab/kernels/triton/_ops.py; SparseAdam's excepted, a documented graph break); on
  CPU tensors its kernels run in Triton's interpreter. More in tests/test_triton_ops.py.

Params are float64 and have no 0-dim tensor: torch 2.13's compiled SGD with momentum
mis-updates 0-dim params (torch.optim's own SGD too; see docs/support-matrix.md).
"""

from __future__ import annotations

import pytest
import torch

import optimlab
from optim_db import backends, flags_for, implemented, loss_fn

# A handful of optimizers with options that exercise lazily created state (SGD's
# momentum buffer), several state tensors, and non-elementwise math.
CASES = {
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
    "SGD": dict(lr=0.01, momentum=0.9, nesterov=True),
    "RMSprop": dict(lr=0.01, centered=True, momentum=0.5),
    "Muon": dict(lr=0.02),
    "Adafactor": dict(lr=0.01),
}
# optimizer -> why its step is not one graph (still correct: test_compiled_training_step)
GRAPH_BREAKS = {
    "Adafactor": "reads each param's step counter with Tensor.item() (capture_scalar_outputs is off by default)",
}
STEPS = 3


def _specs():
    return [s for s in implemented() if s.name in CASES]


def _params(spec):
    shapes = [(4, 3), (3, 5)] if spec.problem == "matrix" else [(4, 3), (5,), (2, 3, 2)]
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]


def _train(spec, flags, compile_backend=None, steps=STEPS, cls=None):
    params = _params(spec)
    opt = (cls or spec.ours_cls)(params, **CASES[spec.name], **flags)

    def train_step():
        opt.zero_grad()
        loss = loss_fn("dense", params)
        loss.backward()
        opt.step()
        return loss

    fn = train_step if compile_backend is None else torch.compile(train_step, backend=compile_backend)
    history = []
    for _ in range(steps):
        fn()
        history.append([p.detach().clone() for p in params])
    return opt, history


def _assert_histories(compiled, eager, **tol):
    for step, (cs, es) in enumerate(zip(compiled, eager, strict=True)):
        for i, (c, e) in enumerate(zip(cs, es)):
            torch.testing.assert_close(c, e, **tol, msg=lambda m: f"step {step}, param {i}: {m}")


# (optimizer, backend) -> a reported optimlab divergence from torch.optim under compile
KNOWN_DIVERGENCES = {
    ("Adam", "foreach"): "optimlab bug: compiled foreach Adam differs from compiled torch.optim "
                         "foreach Adam by ~4e-9 relative in float64 (eager is identical)",
}


def _python_cases(known=True):
    for spec in _specs():
        for backend in ("forloop", "foreach"):
            if backend in backends(spec):
                why = KNOWN_DIVERGENCES.get((spec.name, backend)) if known else None
                marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
                yield pytest.param(spec, backend, id=f"{spec.name}-{backend}", marks=marks)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("spec,backend", _python_cases())
def test_compiled_training_step(spec, backend):
    flags = flags_for(spec, backend)
    opt, compiled = _train(spec, flags, "aot_eager")
    assert {c.name for c in opt.backends()} == {backend}
    ref, theirs = _train(spec, flags, "aot_eager", cls=spec.torch_cls)
    # the drop-in promise: torch.optim's numbers under torch.compile (AOTAutograd may
    # decompose ops such as lerp/addcdiv differently: last-bit differences only)
    _assert_histories(compiled, theirs, rtol=1e-12, atol=1e-14)
    # and close to eager: compiled, torch's (and so optimlab's) steps compute bias
    # corrections from the float32 step tensor instead of a Python float
    _, eager = _train(spec, flags)
    _assert_histories(compiled, eager, rtol=1e-5, atol=1e-6)
    ref_state = ref.state_dict()["state"]
    for pid, st in ref_state.items():
        for key, value in st.items():
            got = opt.state_dict()["state"][pid][key]
            if torch.is_tensor(value):
                torch.testing.assert_close(got, value, rtol=1e-12, atol=1e-14)
            else:
                assert got == value


@pytest.mark.parametrize("spec,backend", _python_cases(known=False))
def test_step_is_one_graph(spec, backend):
    params = _params(spec)
    opt = spec.ours_cls(params, **CASES[spec.name], **flags_for(spec, backend))
    loss_fn("dense", params).backward()
    explanation = torch._dynamo.explain(opt.step)()
    if spec.name in GRAPH_BREAKS:
        assert explanation.graph_break_count > 0  # documented; drop the entry once fixed
        return
    assert explanation.graph_break_count == 0, [str(b.reason)[:300] for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_inductor_training_step():
    """The default backend (inductor: generated C++ kernels) on one optimizer."""
    spec = next((s for s in _specs() if s.name == "Adam" and "foreach" in backends(s)), None)
    if spec is None:
        pytest.skip("optimlab has no foreach Adam here")
    flags = flags_for(spec, "foreach")
    _, compiled = _train(spec, flags, "inductor", steps=2)
    _, theirs = _train(spec, flags, "inductor", steps=2, cls=spec.torch_cls)
    _, eager = _train(spec, flags, steps=2)
    # inductor generates different fused loops for ours and torch's op sequences; they agree
    # to ~4e-9 relative in float64 (float32 step scalars enter both)
    _assert_histories(compiled, theirs, rtol=1e-7, atol=1e-9)
    _assert_histories(compiled, eager, rtol=1e-5, atol=1e-6)  # float32 step scalars, as above


def _fused_cases():
    for spec in _specs():
        for backend in optimlab._dispatch.FUSED_BACKENDS:
            if backend in backends(spec):
                yield pytest.param(spec, backend, id=f"{spec.name}-{backend}")


# fused backend -> why a compiled step is not one graph (still correct: the test above)
FUSED_GRAPH_BREAKS = {  # backend -> why its compiled step breaks the graph (none now)
}


@pytest.mark.parametrize("spec,backend", _fused_cases())
def test_fused_backend_in_compiled_step(spec, backend, monkeypatch):
    why = optimlab._dispatch._unavailable(spec.ours_cls.algorithm, backend)
    if why:
        pytest.skip(why)
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    opt, compiled = _train(spec, {}, "aot_eager")
    assert {c.name for c in opt.backends()} == {backend}
    _, eager = _train(spec, {})
    # cpp: the operator in the graph computes the eager scalars when it runs; triton: a
    # graph break, the kernel runs eagerly on the eager scalars
    _assert_histories(compiled, eager, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec,backend", _fused_cases())
def test_fused_step_is_one_graph(spec, backend, monkeypatch):
    why = optimlab._dispatch._unavailable(spec.ours_cls.algorithm, backend)
    if why:
        pytest.skip(why)
    if backend in FUSED_GRAPH_BREAKS:  # (explain does not count a torch.compiler.disable call)
        pytest.skip(f"documented graph break: {FUSED_GRAPH_BREAKS[backend]}")
    if spec.name in GRAPH_BREAKS:
        pytest.skip(f"documented graph break: {GRAPH_BREAKS[spec.name]}")
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    params = _params(spec)
    opt = spec.ours_cls(params, **CASES[spec.name])
    loss_fn("dense", params).backward()
    explanation = torch._dynamo.explain(opt.step)()
    assert explanation.graph_break_count == 0, [str(b.reason)[:300] for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    graphs = [str(n.target) for g in explanation.graphs for n in g.graph.nodes]
    prefix = "triton_" if backend == "triton" else ""  # (the triton ops: optimlab::triton_<alg>_)
    assert f"optimlab.{prefix}{spec.ours_cls.algorithm}_.default" in graphs
