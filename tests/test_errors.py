"""Bad inputs raise torch's exception type and message, and a step that raises changes nothing."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.testing._internal.common_optimizers import OptimizerErrorEnum

from helpers import outcome, snapshot
from optim_db import implemented, loss_fn, make_params


def _default_params(dtype):
    p = torch.nn.Parameter(torch.randn(2, 3, dtype=dtype))
    p.grad = torch.randn_like(p)
    return [p]


def _db_cases():
    for spec in implemented():
        for dtype in (torch.float32, torch.float64):
            inputs = spec.info.optim_error_inputs_func(device="cpu", dtype=dtype)
            for e in inputs:
                yield pytest.param(spec, e, id=f"{spec.name}-{str(dtype)[6:]}-{e.optimizer_error_input.desc}")


def _attempt(cls, error_input, dtype=torch.float32):
    oi = error_input.optimizer_error_input
    params = oi.params if oi.params is not None else _default_params(dtype)
    if error_input.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        return lambda: cls(params, **oi.kwargs)
    return lambda: cls(params, **oi.kwargs).step()


@pytest.mark.parametrize("spec,error_input", _db_cases())
def test_torch_error_database(spec, error_input):
    """Every error input of torch's OptimizerInfo database raises (or warns) the same."""
    kind, regex = error_input.error_type, error_input.error_regex
    if issubclass(kind, Warning):
        with pytest.warns(kind, match=regex):
            _attempt(spec.ours_cls, error_input)()
        return
    with pytest.raises(kind, match=regex) as ours:
        _attempt(spec.ours_cls, error_input)()
    with pytest.raises(kind) as ref:
        _attempt(spec.torch_cls, error_input)()
    assert str(ours.value) == str(ref.value)


def _step(opt, kind):
    params = [p for g in opt.param_groups for p in g["params"]]
    loss_fn("matrix" if kind == "matrix" else "dense", params).backward()
    return opt.step()


def _scenarios(spec):
    """Bad inputs beyond torch's database: torch's behaviour is the oracle."""
    kind = spec.problem
    dense = lambda: make_params("matrix" if kind == "matrix" else "dense", torch.float32)  # noqa: E731
    yield "negative lr", lambda cls: cls(dense(), lr=-1.0)
    yield "empty params", lambda cls: cls([])
    yield "params not iterable", lambda cls: cls(5)
    yield "named and unnamed", lambda cls: cls([("a", dense()[0]), dense()[1]])
    yield "foreach and fused", lambda cls: cls(dense(), foreach=True, fused=True)
    yield "unknown kwarg", lambda cls: cls(dense(), not_an_option=1)
    yield "sparse param", lambda cls: cls([torch.nn.Parameter(torch.eye(3).to_sparse())])
    yield "Tensor lr with foreach", lambda cls: cls(dense(), lr=torch.tensor(0.01), foreach=True)
    for backend in ("forloop", "foreach"):
        yield f"capturable on cpu ({backend})", lambda cls, b=backend: _step(
            cls(dense(), capturable=True, **({"foreach": b == "foreach"} if spec.has_foreach_flag else {})), kind)
    yield "foreach with differentiable", lambda cls: _step(cls(dense(), foreach=True, differentiable=True), kind)
    yield "Tensor lr of 2 elements", lambda cls: cls(dense(), lr=torch.tensor([0.1, 0.2]))


@pytest.mark.parametrize(
    "spec,desc,make",
    [pytest.param(s, d, m, id=f"{s.name}-{d}") for s in implemented() for d, m in _scenarios(s)],
)
def test_same_error_as_torch(spec, desc, make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ours = outcome(lambda: make(spec.torch_cls)), outcome(lambda: make(spec.ours_cls))
    assert ours[0] == ref[0], (ours, ref)
    if ref[0] == "raise":
        assert ours[1:] == ref[1:]


def _step_error_cases():
    for spec in implemented():
        if spec.problem == "sparse":  # dense grads are its error case
            yield pytest.param(spec, "dense grad", id=f"{spec.name}-dense grad")
        elif not spec.info.supports_sparse:
            yield pytest.param(spec, "sparse grad", id=f"{spec.name}-sparse grad")
        if spec.info.supports_complex is False and spec.problem != "sparse":
            yield pytest.param(spec, "complex param", id=f"{spec.name}-complex param")


@pytest.mark.parametrize("spec,case", _step_error_cases())
def test_step_error_changes_nothing(spec, case):
    """The bad tensor comes last, after good ones: nothing may be updated before the raise."""
    results = []
    for cls in (spec.torch_cls, spec.ours_cls):
        torch.manual_seed(0)
        kind = "matrix" if spec.problem == "matrix" else "dense"
        params = make_params(kind, torch.float32)
        loss_fn(kind, params).backward()
        bad = torch.nn.Parameter(torch.randn(6, 3))
        if case == "sparse grad":
            bad.grad = torch.randn(6, 3).to_sparse()
        elif case == "dense grad":
            params = make_params("sparse", torch.float32)
            loss_fn("dense", params).backward()
            bad.grad = torch.randn(6, 3)
        else:
            bad = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))
            bad.grad = torch.randn_like(bad)
        opt = cls(params + [bad])
        before = snapshot(opt, params + [bad])
        results.append(outcome(opt.step))
        if cls is spec.ours_cls:
            after = snapshot(opt, params + [bad])
            for a, b in zip(before[0], after[0]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert before[1]["state"] == {} and after[1]["state"] == {}, "state was created"
    ref, ours = results
    assert ref[0] == "raise" and ours[:2] == ref[:2], (ours, ref)
    assert re.sub(r"\s+", " ", ours[2]) == re.sub(r"\s+", " ", ref[2])


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_step_requiring_grad_in_differentiable_mode(name):
    """torch refuses a ``step`` that requires grad under differentiable=True (not in its error
    database); optimlab raises the same, before anything changes."""
    import optimlab

    errors = []
    for lib in (torch.optim, optimlab):
        q = torch.randn(3, dtype=torch.float64, requires_grad=True).clone()  # non-leaf, as in
        opt = getattr(lib, name)([q], differentiable=True)                    # differentiable use
        q.grad = torch.ones_like(q)
        opt.step()
        opt.state[q]["step"].requires_grad_(True)
        before = snapshot(opt, [q])
        with pytest.raises(RuntimeError) as e:
            opt.step()
        errors.append(str(e.value))
        if lib is optimlab:
            after = snapshot(opt, [q])
            torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
            torch.testing.assert_close(after[1]["state"], before[1]["state"], rtol=0, atol=0)
    assert errors[0] == errors[1] == "`requires_grad` is not supported for `step` in differentiable mode"
