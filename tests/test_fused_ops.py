"""The cpp backend's fused kernels as torch operators (``torch.ops.optimlab.<algorithm>_``).

Every optimizer with a cpp kernel, on its default CPU backend (cpp), under the tools
that see a step through torch's dispatcher rather than by running it:

* ``make_fx`` (as torch.func users trace a step): the graph holds the operator, and
  replaying it on fresh copies of params and state gives the eager step (twice: the
  step-dependent scalars are computed inside the operator, not baked into the graph);
* ``torch.compile(opt.step)`` in a training loop whose ``zero_grad()`` recreates the
  grads: the eager for-loop's numbers, no graph break beyond torch.optim's own step
  in the same loop, and no more compiles than torch.optim's step;
* ``torch.compile(fullgraph=True)`` of a function calling an operator directly;
* ``torch.library.opcheck`` on every operator.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map_only

import optimlab
import optimlab.kernels.cpu as cpu
from optim_db import loss_fn
from optimlab.kernels import ops

# optimizer -> constructor kwargs that exercise its state and options
CASES = {
    "SGD": dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=0.01),
    "Adagrad": dict(lr=0.1, lr_decay=0.01, weight_decay=0.1),
    "Adadelta": dict(lr=1.0, weight_decay=0.1, maximize=True),
    "Adamax": dict(lr=0.01, weight_decay=0.1),
    "ASGD": dict(lr=0.01, t0=2, lambd=0.1, weight_decay=0.1),  # mu changes from step 3
    "NAdam": dict(lr=0.01, weight_decay=0.1),
    "RAdam": dict(lr=0.01, weight_decay=0.1),  # rectified from step 6 on
    "RMSprop": dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1),
    "Rprop": dict(lr=0.01),
    "Adafactor": dict(lr=0.01, weight_decay=0.1),
}
SHAPES = [(4, 3), (5,), (2, 3, 2)]
STEPS = 10
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture(scope="module", autouse=True)
def _cpp_available():
    why = cpu.availability()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _params(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)) for s in SHAPES]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]


def _state_tensors(opt, params):
    return [opt.state[p][k] for p in params for k in sorted(opt.state[p]) if torch.is_tensor(opt.state[p][k])]


def _op_name(name):
    return f"optimlab.{getattr(optimlab, name).algorithm}_"


def _close(got, want, dtype, what):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m: f"{what} {i}: {m}")


# ---- (a) make_fx --------------------------------------------------------------------------
def check_make_fx_replays(cls, kwargs, params, ref_params, backend, target, close):
    """A ``make_fx`` graph of a step of ``cls(params, **kwargs)`` (running ``backend``) calls
    exactly the operator ``target``, and replayed twice on copies of the optimizer's tensors gives
    what two eager steps of ``cls(ref_params)`` give: ``close(got, want, what)`` for params and
    state. (Also used by tests/test_triton_ops.py.)"""
    opt, ref = cls(params, **kwargs), cls(ref_params, **kwargs)
    assert {c.name for c in opt.backends()} == {backend}
    for o, ps in ((opt, params), (ref, ref_params)):  # state exists (eager first step)
        for p, g in zip(ps, _grads(ps, 1)):
            p.grad = g
        o.step()
    grads = _grads(params, 2)
    state = _state_tensors(opt, params)
    before = [t.detach().clone() for t in params + state]

    def step(params, grads, state):  # the optimizer's own tensors are the graph's inputs
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    gm = make_fx(step)(params, grads, state)
    ops = [str(n.target) for n in gm.graph.nodes if str(n.target).startswith("optimlab.")]
    assert ops == [f"{target}.default"], gm.code

    n = len(params)
    fresh = [t.clone() for t in before]
    for k in (2, 3):  # replayed twice: steps 2 and 3, with the step counters the graph advances
        for p, g in zip(ref_params, _grads(ref_params, 2)):
            p.grad = g
        ref.step()
        with torch.no_grad():
            gm(fresh[:n], [g.clone() for g in grads], fresh[n:])
        close(fresh[:n], [p.detach() for p in ref_params], f"step {k}, param")
        close(fresh[n:], _state_tensors(ref, ref_params), f"step {k}, state")


@pytest.mark.parametrize("name", CASES)
def test_make_fx_graph_holds_the_operator_and_replays(name):
    check_make_fx_replays(getattr(optimlab, name), CASES[name], _params(), _params(), "cpp", _op_name(name),
                          lambda got, want, what: _close(got, want, torch.float64, what))


# ---- (b) torch.compile(opt.step) in a training loop -----------------------------------------
def train_steps(cls, kwargs, params, kind="dense", compile_backend=None, steps=STEPS):
    """``steps`` training steps of ``cls(params, **kwargs)`` (zero_grad, forward on loss ``kind``,
    backward, step); with a compile backend, ``opt.step`` is compiled. Returns (the optimizer,
    params per step, compiles, graph breaks). (Also used by tests/test_triton_ops.py.)"""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    opt = cls(params, **kwargs)
    counter = CompileCounterWithBackend(compile_backend) if compile_backend else None
    step = torch.compile(opt.step, backend=counter) if counter else opt.step
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(kind, params).backward()
        step()
        history.append([p.detach().clone() for p in params])
    breaks = sum(counters["graph_break"].values())
    return opt, history, (counter.frame_count if counter else 0), breaks


def _train(cls, kwargs, dtype, compile_backend=None, steps=STEPS):
    return train_steps(cls, kwargs, _params(dtype), "dense", compile_backend, steps)


def _compiled_case(name, dtype, backend, kwargs=None, extra_compiles=0):
    cls, kwargs = getattr(optimlab, name), CASES[name] if kwargs is None else kwargs
    opt, compiled, compiles, breaks = _train(cls, kwargs, dtype, backend)
    assert {c.name for c in opt.backends()} == {"cpp"}
    _, _, torch_compiles, torch_breaks = _train(getattr(torch.optim, name), kwargs, dtype, backend)
    _, eager, _, _ = _train(cls, {**kwargs, "foreach": False}, dtype)  # the for-loop reference
    for step, (c, e) in enumerate(zip(compiled, eager)):
        _close(c, e, dtype, f"step {step}, param")
    assert breaks <= torch_breaks, f"{breaks} graph breaks, torch.optim's step: {torch_breaks}"
    assert compiles <= torch_compiles + extra_compiles, f"{compiles} compiles, torch.optim's step: {torch_compiles}"


@pytest.mark.parametrize("name", [n for n in CASES if n != "Adafactor"])
def test_compiled_step_in_graph(name):
    _compiled_case(name, torch.float64, "aot_eager")


def test_compiled_adafactor_step_in_graph():
    """torch.optim.Adafactor's step is not traced by dynamo at all (no compile: its
    ``.item()``s run eagerly); optimlab's cpp step is one graph holding the operator."""
    _compiled_case("Adafactor", torch.float64, "aot_eager", extra_compiles=1)


@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_compiled_step_in_graph_float32(name):
    _compiled_case(name, torch.float32, "aot_eager")


def test_compiled_step_inductor():
    _compiled_case("AdamW", torch.float64, "inductor")


def test_compiled_step_tensor_hyperparameters():
    """Tensor lr and betas reach the operator as graph inputs (tensor_hparams), not .item()."""
    kwargs = dict(lr=torch.tensor(0.01), betas=(torch.tensor(0.8), torch.tensor(0.9)), weight_decay=0.1)
    _compiled_case("Adam", torch.float64, "aot_eager", kwargs)


def train_with_scheduler(cls, params, lr, compile_backend=None, steps=6):
    """``steps`` training steps of ``cls(params, lr=lr, weight_decay=0.1)`` with a StepLR changing lr
    every step; with a compile backend, ``opt.step`` is compiled. Returns (params, compiles).
    (Also used by tests/test_triton_ops.py.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    opt = cls(params, lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    counter = CompileCounterWithBackend(compile_backend) if compile_backend else None
    step = torch.compile(opt.step, backend=counter) if counter else opt.step
    for _ in range(steps):
        opt.zero_grad()
        loss_fn("dense", params).backward()
        step()
        sched.step()
    return [p.detach() for p in params], (counter.frame_count if counter else 0)


@pytest.mark.parametrize("lr", [0.01, torch.tensor(0.01)], ids=["float-lr", "tensor-lr"])
def test_compiled_step_with_scheduler(lr):
    """A scheduler changing lr every step: the float reaches the operator through tensor
    arithmetic, so it becomes a graph input after one recompile, as in torch.optim's step
    (a float argument of the operator would be guarded on: a recompile per step); a Tensor
    lr is a graph input from the start."""
    def run(cls, compile_backend=None):
        return train_with_scheduler(cls, _params(), lr.clone() if isinstance(lr, torch.Tensor) else lr,
                                    compile_backend)

    compiled, compiles = run(optimlab.Adam, "aot_eager")
    _, torch_compiles = run(torch.optim.Adam, "aot_eager")
    eager, _ = run(optimlab.Adam)
    _close(compiled, eager, torch.float64, "param")
    assert compiles <= torch_compiles, f"{compiles} compiles, torch.optim's step: {torch_compiles}"


# ---- the operators themselves -----------------------------------------------------------------
class _Recorder(TorchDispatchMode):
    """Records (a copy of) the arguments of every optimlab operator call, and runs it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "optimlab":
            self.calls.append((func, _copy(args)))
        return func(*args, **(kwargs or {}))


def _copy(args):
    return tree_map_only(torch.Tensor, lambda t: t.detach().clone(), args)


def _tensors(args):
    return [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]


# name -> (optimizer, constructor kwargs): every operator, plus Tensor hyperparameters
SAMPLES = {name: (name, kwargs) for name, kwargs in CASES.items() if name != "AdamW"}
SAMPLES["Adam-tensor-hparams"] = ("Adam", dict(lr=torch.tensor(0.01),
                                                betas=(torch.tensor(0.8), torch.tensor(0.9))))
SAMPLES["Adagrad-tensor-lr"] = ("Adagrad", dict(lr=torch.tensor(0.1), lr_decay=0.01))


def _before_second_step(key):
    """SAMPLES[key]'s optimizer and params after one step, with the second step's grads."""
    name, kwargs = SAMPLES[key]
    params = _params()
    return one_step_then_grads(getattr(optimlab, name)(params, **kwargs), params), params


def one_step_then_grads(opt, params):
    """``opt`` after one step, with the second step's grads set. (Also used by
    tests/test_triton_ops.py.)"""
    for k in (1, 2):
        for p, g in zip(params, _grads(params, k)):
            p.grad = g
        if k == 1:
            opt.step()
    return opt


def _sample(key, amp=False):
    """The operator and the arguments of the second step of SAMPLES[key], as the update
    passes them (recorded: under a dispatch mode the update calls the operator)."""
    opt, _ = _before_second_step(key)
    return record_step(opt, amp)


def record_step(opt, amp=False):
    """The operator one ``opt.step()`` calls and its arguments (recorded: under a dispatch mode
    the update calls the operator); with ``amp``, with a grad_scale and found_inf added.
    (Also used by tests/test_triton_ops.py.)"""
    with _Recorder() as rec:
        opt.step()
    assert len(rec.calls) == 1, rec.calls
    func, args = rec.calls[0]
    if amp:  # grad_scale, found_inf: the grads are unscaled in place
        i = [a.name for a in func._schema.arguments].index("grad_scale")
        args = (*args[:i], torch.tensor(4.0), torch.tensor(0.0))
    return func, args


def test_every_kernel_is_an_operator():
    """One operator per algorithm kernel in csrc/bindings.cpp, each with a fake implementation."""
    ext = cpu.load()
    kernels = {n for n in dir(ext) if not n.startswith("_") and callable(getattr(ext, n))}
    kernels -= {"add_to_scalars", "read_scalars", "write_scalars",  # host helpers
                "plan_scan", "state_columns"}  # (the base class's per-step passes: optimizer.py)
    # low precision's write-back kernel: called in plain eager code only (under tracing the
    # write-back runs as torch ops, which make_fx and dynamo record; optimlab/low_precision.py)
    kernels -= {"lp_write"}
    assert set(ops.OPS) == kernels
    for algorithm in ops.OPS:
        overload = ops.op(algorithm)
        assert overload._schema.is_mutable
        assert torch._C._dispatch_has_kernel_for_dispatch_key(overload.name(), "CPU")
        assert overload.name() == f"optimlab::{algorithm}_"


@pytest.mark.parametrize("key", SAMPLES)
def test_operator_gives_the_eager_step(key):
    """The operator (through the dispatcher) and a plain eager step (its CPU implementation,
    called directly) give the same bits."""
    func, args = _sample(key)
    opt, params = _before_second_step(key)
    before = _copy(args)
    func(*args)
    opt.step()
    for got, want in zip(args[0], params):
        assert torch.equal(got, want.detach())
    assert any(not torch.equal(a, b) for a, b in zip(_tensors(args), _tensors(before)))


@pytest.mark.parametrize("key", SAMPLES)
def test_operator_under_fullgraph_compile(key):
    func, args = _sample(key, amp=key == "Adam")
    eager, compiled = _copy(args), _copy(args)
    func(*eager)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(*args):
        func(*args)

    step(*compiled)
    for e, c in zip(_tensors(eager), _tensors(compiled)):
        assert torch.equal(e, c)


@pytest.mark.parametrize("amp", [False, True], ids=["plain", "amp"])
@pytest.mark.parametrize("key", SAMPLES)
def test_opcheck(key, amp):
    """torch.library.opcheck: the schema (what is mutated), the fake implementation, the
    autograd registration and AOT dispatch with dynamic shapes."""
    func, args = _sample(key, amp=amp)
    result = torch.library.opcheck(func, args)
    assert set(result.values()) == {"SUCCESS"}, result
