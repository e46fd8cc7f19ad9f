"""The Triton backend's updates as torch operators (``torch.ops.optimlab.triton_<algorithm>_``),
run on CPU tensors by Triton's interpreter (``TRITON_INTERPRET=1``):

* ``make_fx`` of a triton-backend step: the graph holds the operator (one call per param
  group), and replaying it on fresh copies of params and state gives the eager steps
  (twice: the step-dependent scalars are computed when the operator runs);
* ``torch.compile(opt.step)`` over 10 training steps: the eager triton step bit for bit,
  the eager for-loop's numbers, no graph break beyond torch.optim's own step in the same
  loop, and no more compiles than torch.optim's step;
* a scheduler's ``lr`` reaches the operator as a graph input (no recompile per step);
* ``torch.compile(fullgraph=True)`` of a function calling an operator directly;
* ``torch.library.opcheck`` on the operators.

On a GPU the same operators run their CUDA implementation: tests/test_triton_cuda.py.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import pytest  # noqa: E402

pytest.importorskip("triton")

import torch  # noqa: E402

import optimlab  # noqa: E402
from test_fused_ops import (  # noqa: E402  (the cpp operators' helpers)
    CASES as FUSED_CASES, check_make_fx_replays, one_step_then_grads, record_step,
    train_steps, train_with_scheduler)
from optimlab.kernels.triton import _ops  # noqa: E402
from optimlab.kernels.triton._table import ALGORITHMS  # noqa: E402

# optimizer -> constructor kwargs that exercise its state and options: the cpp operators' cases,
# and Muon (which has a Triton kernel, not a cpp one)
CASES = {**FUSED_CASES, "Muon": dict(lr=0.02, weight_decay=0.1)}
STEPS = 10
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("OPTIMLAB_BACKEND", "triton")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _params(name, seed=0):
    shapes = [(4, 3), (3, 5)] if name == "Muon" else [(4, 3), (5,), (2, 3, 2)]
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]


def _close(got, want, what, **tol):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **(tol or TOL), msg=lambda m: f"{what} {i}: {m}")


def test_every_update_but_sparse_adam_is_an_operator():
    for algorithm, entry in ALGORITHMS.items():
        update = optimlab._dispatch.kernel(algorithm, "triton")
        assert update.traceable is entry.operator
        if entry.operator:
            assert _ops.op(algorithm)._schema.is_mutable
            for key in ("CPU", "CUDA"):
                assert torch._C._dispatch_has_kernel_for_dispatch_key(_ops.op(algorithm).name(), key)
    assert not ALGORITHMS["sparse_adam"].operator


# ---- make_fx ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_make_fx_graph_holds_the_operator_and_replays(name):
    cls = getattr(optimlab, name)
    # (the same kernels on the same inputs: the same bits)
    check_make_fx_replays(cls, CASES[name], _params(name), _params(name), "triton",
                          f"optimlab.triton_{cls.algorithm}_",
                          lambda got, want, what: _close(got, want, what, rtol=0, atol=0))


# ---- torch.compile(opt.step) in a training loop -------------------------------------------------
def _train(cls, name, kwargs, compile_backend=None, steps=STEPS):
    return train_steps(cls, kwargs, _params(name), "matrix" if name == "Muon" else "dense", compile_backend, steps)


# optimizer -> (graph breaks, compiles) more than torch.optim's step, and why:
EXTRA = {
    # torch.optim.Adafactor's step is not compiled at all (its .item()s run eagerly)
    "Adafactor": (0, 1),
    # torch.optim.Muon's step is decorated with torch.no_grad, without the graph break (and
    # the second frame) that torch's other steps, and optimlab's base for every backend, have
    "Muon": (1, 1),
}


# (one per kernel family and step-scalar shape: compiling 13 optimizers twice each in the
# interpreter costs a minute of CI; tests/test_triton_cuda.py compiles on a GPU)
COMPILED = ["SGD", "Adam", "Adagrad", "NAdam", "ASGD", "Adafactor", "Muon"]


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_step_in_graph(name, monkeypatch):
    cls, kwargs = getattr(optimlab, name), CASES[name]
    opt, compiled, compiles, breaks = _train(cls, name, kwargs, "aot_eager")
    assert {c.name for c in opt.backends()} == {"triton"}
    _, eager, _, _ = _train(cls, name, kwargs)
    for step, (c, e) in enumerate(zip(compiled, eager)):  # the operator runs the eager step
        _close(c, e, f"step {step}, param (eager triton)", rtol=0, atol=0)
    monkeypatch.setenv("OPTIMLAB_BACKEND", "forloop")
    ref, forloop, _, _ = _train(cls, name, kwargs)  # the reference
    assert {c.name for c in ref.backends()} == {"forloop"}
    for step, (c, e) in enumerate(zip(compiled, forloop)):
        # (float64 params: the project's float64 tolerance; measured worst 1.1e-15, SGD)
        _close(c, e, f"step {step}, param (for-loop)", rtol=1e-10, atol=1e-12)
    _, _, torch_compiles, torch_breaks = _train(getattr(torch.optim, name), name, kwargs, "aot_eager")
    extra_breaks, extra_compiles = EXTRA.get(name, (0, 0))
    assert breaks <= torch_breaks + extra_breaks, f"{breaks} graph breaks, torch.optim's step: {torch_breaks}"
    assert compiles <= torch_compiles + extra_compiles, f"{compiles} compiles, torch.optim's step: {torch_compiles}"


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adafactor", "Muon"])
def test_step_is_one_graph(name):
    params = _params(name)
    opt = getattr(optimlab, name)(params, **CASES[name])
    for p, g in zip(params, _grads(params, 1)):
        p.grad = g
    explanation = torch._dynamo.explain(opt.step)()
    assert explanation.graph_break_count == 0, [str(b.reason)[:300] for b in explanation.break_reasons]
    assert explanation.graph_count == 1
    called = [str(n.target) for g in explanation.graphs for n in g.graph.nodes]
    assert f"optimlab.triton_{opt.algorithm}_.default" in called


def test_compiled_step_with_scheduler():
    """A scheduler changing lr every step: the float reaches the operator through tensor
    arithmetic, a graph input after one recompile, as in torch.optim's step."""
    def run(cls, compile_backend=None):
        return train_with_scheduler(cls, _params("Adam"), 0.01, compile_backend)

    compiled, compiles = run(optimlab.Adam, "aot_eager")
    eager, _ = run(optimlab.Adam)
    _close(compiled, eager, "param", rtol=0, atol=0)
    _, torch_compiles = run(torch.optim.Adam, "aot_eager")
    assert compiles <= torch_compiles, f"{compiles} compiles, torch.optim's step: {torch_compiles}"


# ---- the operators themselves --------------------------------------------------------------------
SAMPLES = {
    "SGD": ("SGD", CASES["SGD"]),
    "Adam-tensor-hparams": ("Adam", dict(lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.9)),
                                         amsgrad=True)),
    "Adafactor": ("Adafactor", CASES["Adafactor"]),
    "NAdam": ("NAdam", CASES["NAdam"]),
}


@pytest.mark.parametrize("amp", [False, True], ids=["plain", "amp"])
@pytest.mark.parametrize("key", SAMPLES)
def test_opcheck(key, amp):
    """torch.library.opcheck: the schema (what is mutated), the fake implementation and
    AOT dispatch; the recorded call also replays to the eager step."""
    name, kwargs = SAMPLES[key]
    params = _params(name)
    opt = one_step_then_grads(getattr(optimlab, name)(params, **kwargs), params)
    func, args = record_step(opt, amp)
    result = torch.library.opcheck(func, args)
    assert set(result.values()) == {"SUCCESS"}, result


# ---- the operator called directly, under torch.compile(fullgraph=True) ----------------------
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_operator_under_fullgraph_compile(name, monkeypatch):
    """A function calling ``triton_<algorithm>_`` directly compiles to one graph, and runs the
    eager update (bit for bit): the operator's arguments as a traced step passes them."""
    cls = getattr(optimlab, name)
    params = _params(name)
    opt = cls(params, **CASES[name])
    for p, g in zip(params, _grads(params, 1)):  # state exists (eager first step)
        p.grad = g
    opt.step()
    for p, g in zip(params, _grads(params, 2)):
        p.grad = g
    captured = []
    monkeypatch.setattr(_ops, "op", lambda algorithm: lambda *args: captured.append(args))
    group = opt.param_groups[0]
    state = {k: [opt.state[p][k] for p in params] for k in ALGORITHMS[cls.algorithm].state
             if k in opt.state[params[0]]}
    _ops.call(cls.algorithm, group, params, [p.grad for p in params], state, None, None, {})
    monkeypatch.undo()
    (args,) = captured
    op = _ops.op(cls.algorithm)

    def copy(args):
        return [[t.detach().clone() for t in a] if isinstance(a, list) and a and torch.is_tensor(a[0])
                else list(a) if isinstance(a, list) else a for a in args]

    eager, compiled = copy(args), copy(args)
    with torch.no_grad():
        op(*eager)

        @torch.compile(fullgraph=True, backend="aot_eager")
        def step(*args):
            op(*args)

        step(*compiled)
    tensors = [(e, c) for a, b in zip(eager, compiled) if isinstance(a, list) for e, c in zip(a, b)
               if torch.is_tensor(e)]
    assert len(tensors) > 2 * len(params)
    for e, c in tensors:
        assert torch.equal(e, c)
    assert any(not torch.equal(e, b) for e, b in zip(eager[0], args[0]))  # it updated the params
