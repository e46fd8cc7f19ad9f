"""optimlab.lr_scheduler against torch.optim.lr_scheduler: sequences, state, warnings, errors."""

from __future__ import annotations

import inspect
import io
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.optim.lr_scheduler as T

import optimlab
import optimlab.lr_scheduler as O

SGD = optimlab.SGD if hasattr(optimlab, "SGD") else torch.optim.SGD
Adam = optimlab.Adam if hasattr(optimlab, "Adam") else torch.optim.Adam
LIBS = {"torch": (T, {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}), "optimlab": (O, {"sgd": SGD, "adam": Adam})}

N_STEPS = 220
RESUME_AT = 97
LRS = (0.1, 0.03)  # two param groups with different lrs


def make_opt(cls, tensor_lr=False):
    lr = (lambda v: torch.tensor(v, dtype=torch.float64)) if tensor_lr else float
    p1 = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p2 = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    groups = [{"params": [p1], "lr": lr(LRS[0])}, {"params": [p2], "lr": lr(LRS[1])}]
    kwargs = {"momentum": 0.9} if issubclass(cls, torch.optim.SGD) or cls.__name__ == "SGD" else {}
    if tensor_lr and cls.__module__.startswith("torch."):
        kwargs["foreach"] = False  # torch rejects a Tensor lr with foreach=True
    return cls(groups, lr=lr(LRS[0]), **kwargs)


class Warmup:
    """A stateful callable object: torch saves its __dict__ in state_dict."""

    def __init__(self, k):
        self.k = k

    def __call__(self, epoch):
        return min(1.0, (epoch + 1) / self.k)


def plateau_metric(i):
    return 1.0 / (1 + i) if i < 40 else 0.02 + 0.001 * ((i * 7) % 5)


def jump(i):  # non-sequential epochs for the deprecated step(epoch) path
    return (i * 3) % 40 + i // 40


@dataclass
class Case:
    id: str
    factory: Callable  # (lib, optimizer) -> scheduler
    opt: str = "sgd"
    stepper: Callable = lambda s, i: s.step()


C = Case
CASES = [
    C("lambda", lambda L, o: L.LambdaLR(o, lambda e: 0.95**e)),
    C("lambda-list", lambda L, o: L.LambdaLR(o, [lambda e: 1 / (1 + e), Warmup(10)])),
    C("lambda-epoch", lambda L, o: L.LambdaLR(o, Warmup(30)), stepper=lambda s, i: s.step(jump(i))),
    C("multiplicative", lambda L, o: L.MultiplicativeLR(o, lambda e: 0.98)),
    C("multiplicative-list", lambda L, o: L.MultiplicativeLR(o, [lambda e: 0.99, lambda e: 0.97 if e % 3 else 1.0])),
    C("multiplicative-epoch", lambda L, o: L.MultiplicativeLR(o, lambda e: 0.99), stepper=lambda s, i: s.step(jump(i))),
    C("step", lambda L, o: L.StepLR(o, step_size=7, gamma=0.5)),
    C("step-default-gamma", lambda L, o: L.StepLR(o, 30)),
    C("step-epoch", lambda L, o: L.StepLR(o, 4, 0.7), stepper=lambda s, i: s.step(jump(i))),
    C("multistep", lambda L, o: L.MultiStepLR(o, [10, 50, 50, 120], gamma=0.5)),
    C("multistep-unsorted", lambda L, o: L.MultiStepLR(o, [150, 20, 80])),
    C("multistep-epoch", lambda L, o: L.MultiStepLR(o, [5, 12, 12, 30], 0.5), stepper=lambda s, i: s.step(jump(i))),
    C("constant", lambda L, o: L.ConstantLR(o)),
    C("constant-40", lambda L, o: L.ConstantLR(o, factor=0.5, total_iters=40)),
    C("constant-epoch", lambda L, o: L.ConstantLR(o, 0.25, 20), stepper=lambda s, i: s.step(jump(i))),
    C("linear", lambda L, o: L.LinearLR(o)),
    C("linear-warmup", lambda L, o: L.LinearLR(o, start_factor=0.1, total_iters=50)),
    C("linear-to-zero", lambda L, o: L.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=150)),
    C("linear-epoch", lambda L, o: L.LinearLR(o, 0.2, 0.9, 25), stepper=lambda s, i: s.step(jump(i))),
    C("exponential", lambda L, o: L.ExponentialLR(o, gamma=0.98)),
    C("exponential-epoch", lambda L, o: L.ExponentialLR(o, 0.97), stepper=lambda s, i: s.step(jump(i))),
    C("polynomial", lambda L, o: L.PolynomialLR(o)),
    C("polynomial-sq", lambda L, o: L.PolynomialLR(o, total_iters=150, power=2.0)),
    C("polynomial-sqrt", lambda L, o: L.PolynomialLR(o, total_iters=300, power=0.5)),
    C("polynomial-epoch", lambda L, o: L.PolynomialLR(o, 35, 1.5), stepper=lambda s, i: s.step(jump(i))),
    C("cosine-50", lambda L, o: L.CosineAnnealingLR(o, T_max=50)),
    C("cosine-300-etamin", lambda L, o: L.CosineAnnealingLR(o, T_max=300, eta_min=1e-3)),
    C("cosine-epoch", lambda L, o: L.CosineAnnealingLR(o, 30, 1e-4), stepper=lambda s, i: s.step(jump(i))),
    C("chained", lambda L, o: L.ChainedScheduler([L.ConstantLR(o, 0.5, 20), L.ExponentialLR(o, 0.99)])),
    C("chained-3", lambda L, o: L.ChainedScheduler(
        [L.LinearLR(o, 0.1, total_iters=30), L.StepLR(o, 40, 0.5), L.CosineAnnealingLR(o, 60, 1e-3)], o)),
    C("sequential", lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, 0.1, total_iters=20), L.CosineAnnealingLR(o, T_max=180)], milestones=[20])),
    C("sequential-3", lambda L, o: L.SequentialLR(
        o, [L.ConstantLR(o, 0.3, 10), L.ExponentialLR(o, 0.97), L.StepLR(o, 15, 0.5)], [10, 100])),
    C("sequential-multiplicative", lambda L, o: L.SequentialLR(
        o, [L.ExponentialLR(o, 0.9), L.MultiplicativeLR(o, lambda e: 0.98 if e else 0.5)], [30])),
    C("plateau-min", lambda L, o: L.ReduceLROnPlateau(o, patience=5, cooldown=3, min_lr=[1e-3, 1e-4]),
      stepper=lambda s, i: s.step(plateau_metric(i))),
    C("plateau-max-abs", lambda L, o: L.ReduceLROnPlateau(
        o, "max", factor=0.5, patience=2, threshold=0.01, threshold_mode="abs", min_lr=2e-3),
      stepper=lambda s, i: s.step(torch.tensor(-plateau_metric(i)))),
    C("plateau-epoch", lambda L, o: L.ReduceLROnPlateau(o, patience=0, eps=1e-3),
      stepper=lambda s, i: s.step(plateau_metric(i), epoch=i + 1)),
    C("cyclic-triangular", lambda L, o: L.CyclicLR(o, 0.01, 0.1, step_size_up=7)),
    C("cyclic-triangular2-betas", lambda L, o: L.CyclicLR(
        o, [0.01, 0.002], [0.1, 0.05], step_size_up=10, step_size_down=25, mode="triangular2",
        base_momentum=[0.8, 0.85], max_momentum=0.95), opt="adam"),
    C("cyclic-exp-range", lambda L, o: L.CyclicLR(o, 0.001, 0.1, 13, mode="exp_range", gamma=0.99)),
    C("cyclic-scale-fn-iterations", lambda L, o: L.CyclicLR(
        o, 0.001, 0.01, 20, scale_fn=lambda x: 1 / (1 + 0.01 * x), scale_mode="iterations"), opt="adam"),
    C("cyclic-scale-obj-no-momentum", lambda L, o: L.CyclicLR(
        o, 0.001, 0.01, 9, scale_fn=Warmup(3), cycle_momentum=False)),
    C("onecycle-cos", lambda L, o: L.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=N_STEPS + 1)),
    C("onecycle-linear-3phase-betas", lambda L, o: L.OneCycleLR(
        o, 0.2, epochs=11, steps_per_epoch=20, pct_start=0.25, anneal_strategy="linear",
        three_phase=True, base_momentum=[0.8, 0.85], max_momentum=0.9), opt="adam"),
    C("onecycle-cos-3phase-no-momentum", lambda L, o: L.OneCycleLR(
        o, 0.5, total_steps=300, three_phase=True, cycle_momentum=False, div_factor=10.0,
        final_div_factor=100.0)),
    C("warm-restarts", lambda L, o: L.CosineAnnealingWarmRestarts(o, T_0=10)),
    C("warm-restarts-mult", lambda L, o: L.CosineAnnealingWarmRestarts(o, 5, T_mult=2, eta_min=1e-4)),
    C("warm-restarts-fractional", lambda L, o: L.CosineAnnealingWarmRestarts(o, 3, eta_min=1e-3),
      stepper=lambda s, i: s.step(i / 7)),
    C("warm-restarts-mult-fractional", lambda L, o: L.CosineAnnealingWarmRestarts(o, 2, 3),
      stepper=lambda s, i: s.step(0.37 * i)),
]
IDS = [c.id for c in CASES]


def snapshot(opt, sched):
    """Everything a schedule sets: lrs, get_last_lr(), momentum/betas, per group."""
    groups = opt.param_groups
    copy = lambda x: x.clone() if isinstance(x, torch.Tensor) else x  # noqa: E731 (tensors change in place)
    return {
        "lr": [copy(g["lr"]) for g in groups],
        "last": [copy(x) for x in sched.get_last_lr()],
        "momentum": [g.get("momentum") for g in groups],
        "betas": [g.get("betas") for g in groups],
    }


def checkpoint(opt, sched):
    buf = io.BytesIO()  # a real checkpoint: everything must pickle
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def run(case, lib, opt_cls, tensor_lr=False, resume_at=RESUME_AT, load_from=None):
    """Step ``case`` N_STEPS times; at ``resume_at`` rebuild optimizer and
    scheduler and load both state dicts (from ``load_from`` if given)."""
    opt = make_opt(opt_cls, tensor_lr)
    sched = case.factory(lib, opt)
    trace, saved = [snapshot(opt, sched)], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(N_STEPS):
            if i == resume_at:
                saved = sched.state_dict()
                ck = load_from or checkpoint(opt, sched)
                opt = make_opt(opt_cls, tensor_lr)
                sched = case.factory(lib, opt)
                opt.load_state_dict(ck["opt"])
                sched.load_state_dict(ck["sched"])
            lr_objects = [g["lr"] for g in opt.param_groups]
            opt.step()
            case.stepper(sched, i)
            if tensor_lr:  # a Tensor lr is updated in place, never replaced
                assert all(g["lr"] is t for g, t in zip(opt.param_groups, lr_objects))
            trace.append(snapshot(opt, sched))
    warned = [(type(w.message), str(w.message), w.filename) for w in caught]
    return trace, warned, saved, opt


def as_float(x):
    assert not isinstance(x, torch.Tensor) or x.numel() == 1
    return float(x)


def assert_same(a, b, path="value"):
    """Equal structure and types; floats equal to rtol 1e-12."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.allclose(a, b, rtol=1e-12, atol=0), f"{path}: {a} != {b}"
    elif isinstance(a, float):
        assert a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_traces_match(ref, got):
    assert len(ref) == len(got)
    for step, (r, g) in enumerate(zip(ref, got)):
        assert_same(r, g, f"step {step}")


def reference(case, tensor_lr=False):
    return run(case, T, LIBS["torch"][1][case.opt], tensor_lr)


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_torch(case, tensor_lr):
    """Same lrs, get_last_lr(), momentum/betas, warnings and state_dict as torch,
    through a save/rebuild/load in the middle."""
    ref, ref_warned, ref_saved, _ = reference(case, tensor_lr)
    got, got_warned, got_saved, _ = run(case, O, LIBS["optimlab"][1][case.opt], tensor_lr)
    assert_traces_match(ref, got)
    assert got_warned == ref_warned
    assert_same(ref_saved, got_saved, "state_dict")
    # the schedule actually moves (guards against a trivially constant trace)
    assert len({as_float(s["lr"][0]) for s in ref}) > 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cross_driving(case):
    """torch's scheduler drives optimlab's optimizer, optimlab's drives torch's."""
    ref = reference(case)[0]
    torch_sched_optimlab_opt = run(case, T, LIBS["optimlab"][1][case.opt])[0]
    optimlab_sched_torch_opt = run(case, O, LIBS["torch"][1][case.opt])[0]
    assert_traces_match(ref, torch_sched_optimlab_opt)
    assert_traces_match(ref, optimlab_sched_torch_opt)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_checkpoints_load_across_libraries(case):
    """A torch checkpoint resumes an optimlab scheduler, and vice versa."""
    opts = LIBS["torch"][1][case.opt]
    ref, _, _, _ = run(case, T, opts, resume_at=N_STEPS)  # uninterrupted
    for src, dst in ((T, O), (O, T)):
        # checkpoint of ``src`` at RESUME_AT, resumed by ``dst``
        opt = make_opt(opts)
        sched = case.factory(src, opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(RESUME_AT):
                opt.step()
                case.stepper(sched, i)
        ck = checkpoint(opt, sched)
        got = run(case, dst, opts, load_from=ck)[0]
        assert_traces_match(ref, got)


def test_lambda_state_dict_keeps_callable_objects_only():
    states = []
    for L in (T, O):
        opt = make_opt(torch.optim.SGD)
        obj = Warmup(7)
        sched = L.LambdaLR(opt, [lambda e: 1.0, obj])
        obj.k = 11  # state changed after construction is what gets saved
        sd = sched.state_dict()
        assert sd["lr_lambdas"] == [None, {"k": 11}]
        fresh = L.LambdaLR(make_opt(torch.optim.SGD), [lambda e: 1.0, Warmup(3)])
        fresh.load_state_dict(sd)
        assert fresh.lr_lambdas[1].k == 11
        assert "lr_lambdas" in sd  # the caller's dict is left intact
        states.append({k: v for k, v in sd.items()})
    assert_same(states[0], states[1])


def test_cyclic_scale_fn_object_state():
    for L in (T, O):
        fn = Warmup(4)
        sched = L.CyclicLR(make_opt(torch.optim.SGD), 0.01, 0.1, scale_fn=fn)
        fn.k = 9
        sd = sched.state_dict()
        assert sd["_scale_fn_custom"] == {"k": 9} and "_scale_fn_ref" not in sd
        target = Warmup(1)
        L.CyclicLR(make_opt(torch.optim.SGD), 0.01, 0.1, scale_fn=target).load_state_dict(sd)
        assert target.k == 9
        lam = L.CyclicLR(make_opt(torch.optim.SGD), 0.01, 0.1, scale_fn=lambda x: 1.0)
        assert lam.state_dict()["_scale_fn_custom"] is None


def test_mixing_torch_and_optimlab_schedulers():
    """optimlab's composites accept torch's schedulers and vice versa."""

    def build(outer, inner_a, inner_b):
        opt = make_opt(torch.optim.SGD)
        sched = outer.SequentialLR(
            opt, [inner_a.LinearLR(opt, 0.2, total_iters=10), inner_b.CosineAnnealingLR(opt, 40)], [10]
        )
        return opt, sched

    def trace(opt, sched):
        out = []
        for _ in range(80):
            opt.step()
            sched.step()
            out.append([g["lr"] for g in opt.param_groups])
        return out

    ref = trace(*build(T, T, T))
    for combo in ((O, T, O), (T, O, T), (O, O, T)):
        assert_same(ref, trace(*build(*combo)))
    opt = make_opt(torch.optim.SGD)
    chained = T.ChainedScheduler([O.StepLR(opt, 5, 0.5), O.ExponentialLR(opt, 0.9)])
    ref_opt = make_opt(torch.optim.SGD)
    ref_chained = T.ChainedScheduler([T.StepLR(ref_opt, 5, 0.5), T.ExponentialLR(ref_opt, 0.9)])
    assert_same(trace(ref_opt, ref_chained), trace(opt, chained))


# ------------------------------------------------------------------ warnings
def _call_step(sched, *args):  # one call site, so warning locations are comparable
    sched.step(*args)


def _warnings_of(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [(w.category, str(w.message), w.filename, w.lineno) for w in caught]


def _scenario_step_before_optimizer(L, cls):
    opt = make_opt(cls)
    sched = L.StepLR(opt, 3)
    _call_step(sched)


def _scenario_step_overridden(L, cls):
    opt = make_opt(cls)
    sched = L.ExponentialLR(opt, 0.9)
    opt.step = lambda closure=None: None  # replaced after the scheduler wrapped it
    opt.step()
    _call_step(sched)


def _scenario_right_order(L, cls):
    opt = make_opt(cls)
    sched = L.CosineAnnealingLR(opt, 10)
    for _ in range(3):
        opt.step()
        _call_step(sched)


def _scenario_epoch_deprecated(L, cls):
    opt = make_opt(cls)
    sched = L.MultiStepLR(opt, [2, 4])
    opt.step()
    _call_step(sched, 3)


def _scenario_plateau_epoch(L, cls):
    sched = L.ReduceLROnPlateau(make_opt(cls))
    _call_step(sched, 1.0, 5)


def _scenario_two_schedulers_one_optimizer(L, cls):
    opt = make_opt(cls)
    first = (T if L is O else O).StepLR(opt, 2)  # the other library wraps step first
    second = L.LinearLR(opt)
    assert opt.step._wrapped_by_lr_sched
    opt.step()
    _call_step(first)
    _call_step(second)


def _scenario_two_schedulers_no_optimizer_step(L, cls):
    opt = make_opt(cls)
    first = (T if L is O else O).StepLR(opt, 2)
    second = L.LinearLR(opt)
    _call_step(first)
    _call_step(second)


SCENARIOS = [
    _scenario_step_before_optimizer,
    _scenario_step_overridden,
    _scenario_right_order,
    _scenario_epoch_deprecated,
    _scenario_plateau_epoch,
    _scenario_two_schedulers_one_optimizer,
    _scenario_two_schedulers_no_optimizer_step,
]


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, SGD, Adam], ids=["torch-SGD", "optimlab-SGD", "optimlab-Adam"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__[10:] for s in SCENARIOS])
def test_warnings_match_torch(scenario, opt_cls):
    ref = _warnings_of(lambda: scenario(T, opt_cls))
    got = _warnings_of(lambda: scenario(O, opt_cls))
    assert got == ref
    expected = {  # and they are the warnings the scenario is about
        "step_before_optimizer": "Detected call of `lr_scheduler.step()` before `optimizer.step()`",
        "step_overridden": "Seems like `optimizer.step()` has been overridden",
        "epoch_deprecated": "The epoch parameter in `scheduler.step()` was not necessary",
        "plateau_epoch": "The epoch parameter in `scheduler.step()` was not necessary",
        "two_schedulers_no_optimizer_step": "Detected call of `lr_scheduler.step()` before",
    }.get(scenario.__name__[10:])
    if expected is None:
        assert got == []
    else:
        assert got and all(m.startswith(expected) for _, m, _, _ in got)


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR", "LambdaLR"])
def test_get_lr_outside_step_warns_like_torch(name):
    args = {
        "StepLR": (3,), "CosineAnnealingLR": (10,), "OneCycleLR": (1.0, 100),
        "CyclicLR": (0.01, 0.1), "LambdaLR": (lambda e: 0.5,),
    }[name]
    results = []
    for L in (T, O):
        sched = getattr(L, name)(make_opt(torch.optim.SGD), *args)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lrs = sched.get_lr()
        results.append(([(w.category, str(w.message)) for w in caught], lrs))
    assert results[0] == results[1]
    assert results[0][0] == [(UserWarning, "To get the last learning rate computed by the scheduler, please use `get_last_lr()`.")]


def test_step_wrapper_holds_optimizer_weakly():
    """The wrapped ``optimizer.step`` refers to its optimizer through a weakref
    (as torch's does), so it adds no optimizer -> step -> optimizer cycle."""
    for L in (T, O):
        opt = make_opt(SGD)
        sched = L.StepLR(opt, 2)
        cells = [c.cell_contents for c in opt.step.__closure__]
        assert not any(c is opt or c is sched for c in cells)
        assert any(isinstance(c, weakref.ref) and c() is opt for c in cells)
        opt.step()
        assert opt._opt_called is True


LEGACY_RESUME = {
    "lambda": lambda L, o, e: L.LambdaLR(o, lambda k: 0.9**k, last_epoch=e),
    "multiplicative": lambda L, o, e: L.MultiplicativeLR(o, lambda k: 0.9, last_epoch=e),
    "step": lambda L, o, e: L.StepLR(o, 7, 0.5, last_epoch=e),
    "multistep": lambda L, o, e: L.MultiStepLR(o, [14, 20, 30], 0.5, last_epoch=e),
    "constant": lambda L, o, e: L.ConstantLR(o, 0.5, 14, last_epoch=e),
    "linear": lambda L, o, e: L.LinearLR(o, 0.2, 1.0, 30, last_epoch=e),
    "exponential": lambda L, o, e: L.ExponentialLR(o, 0.9, last_epoch=e),
    "polynomial": lambda L, o, e: L.PolynomialLR(o, 40, 2.0, last_epoch=e),
    "cosine": lambda L, o, e: L.CosineAnnealingLR(o, 20, 1e-3, last_epoch=e),
    "cyclic": lambda L, o, e: L.CyclicLR(o, 0.01, 0.1, 5, mode="triangular2", last_epoch=e),
    "onecycle": lambda L, o, e: L.OneCycleLR(o, 1.0, 80, last_epoch=e),
    "warm-restarts": lambda L, o, e: L.CosineAnnealingWarmRestarts(o, 6, 2, last_epoch=e),
}


@pytest.mark.parametrize("factory", LEGACY_RESUME.values(), ids=LEGACY_RESUME.keys())
def test_resume_with_last_epoch_matches_torch(factory):
    """The legacy resume: a new scheduler with ``last_epoch=k`` on a live
    optimizer (the constructor's step must not re-apply a step), and the
    internal ``_update_lr()`` that SequentialLR uses on its children."""

    def trace(L):
        opt = make_opt(torch.optim.SGD)
        first = factory(L, opt, -1)
        for _ in range(13):
            opt.step()
            first.step()
        out = [[g["lr"] for g in opt.param_groups]]
        resumed = factory(L, opt, first.last_epoch)
        out.append([g["lr"] for g in opt.param_groups])
        resumed._update_lr()
        for _ in range(40):
            opt.step()
            resumed.step()
            out.append([g["lr"] for g in opt.param_groups] + [g.get("momentum") for g in opt.param_groups])
        return out

    ref = trace(T)
    assert_same(ref, trace(O))
    assert len({r[0] for r in ref}) > 1


# ------------------------------------------------------------------ tensor lr
@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR", "ReduceLROnPlateau"])
def test_tensor_lr_updated_in_place(name):
    opt = make_opt(torch.optim.SGD, tensor_lr=True)
    held = opt.param_groups[0]["lr"]  # e.g. captured by a compiled/capturable step
    args = {"StepLR": (1, 0.5), "CosineAnnealingLR": (4,), "OneCycleLR": (1.0, 10),
            "CyclicLR": (0.01, 0.1, 2), "ReduceLROnPlateau": ()}[name]
    sched = getattr(O, name)(opt, *args, **({"patience": 0} if name == "ReduceLROnPlateau" else {}))
    values = {held.item()}
    for i in range(4):
        opt.step()
        sched.step(*((1.0,) if name == "ReduceLROnPlateau" else ()))
        assert opt.param_groups[0]["lr"] is held
        values.add(held.item())
        last = sched.get_last_lr()[0]
        assert isinstance(last, torch.Tensor) and last is not held and last.item() == held.item()
    assert len(values) >= 3  # the held tensor saw the schedule


# ------------------------------------------------------------------ errors
def _opt():
    return make_opt(torch.optim.SGD)


def _adagrad():
    return torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(2))])


def _overstep(L):
    sched = L.OneCycleLR(_opt(), 1.0, total_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            sched.step()


def _plateau_group_added(L):
    opt = _opt()
    sched = L.ReduceLROnPlateau(opt, patience=0, min_lr=[0.0, 0.0])
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    sched.step(1.0)
    sched.step(2.0)


def _constant_zero_factor(L):
    opt = _opt()
    sched = L.ConstantLR(opt, factor=0, total_iters=2)
    for _ in range(3):
        opt.step()
        sched.step()


ERRORS = {
    "not-an-optimizer": lambda L: L.StepLR(object(), 3),
    "not-an-optimizer-lambda": lambda L: L.LambdaLR(object(), lambda e: 1.0),
    "not-an-optimizer-plateau": lambda L: L.ReduceLROnPlateau(torch.nn.Linear(1, 1)),
    "not-an-optimizer-cyclic": lambda L: L.CyclicLR(None, 0.1, 1.0),
    "not-an-optimizer-onecycle": lambda L: L.OneCycleLR("sgd", 0.1, 10),
    "missing-step-size": lambda L: L.StepLR(_opt()),
    "resume-without-initial-lr": lambda L: L.ExponentialLR(_opt(), 0.9, last_epoch=3),
    "lambda-list-length": lambda L: L.LambdaLR(_opt(), [lambda e: 1.0]),
    "multiplicative-list-length": lambda L: L.MultiplicativeLR(_opt(), [lambda e: 1.0] * 3),
    "multiplicative-not-callable": lambda L: L.MultiplicativeLR(_opt(), 0.9),
    "constant-factor-high": lambda L: L.ConstantLR(_opt(), factor=1.5),
    "constant-factor-negative": lambda L: L.ConstantLR(_opt(), factor=-0.1),
    "constant-zero-factor-division": _constant_zero_factor,
    "linear-start-zero": lambda L: L.LinearLR(_opt(), start_factor=0),
    "linear-start-high": lambda L: L.LinearLR(_opt(), start_factor=1.5),
    "linear-end-high": lambda L: L.LinearLR(_opt(), end_factor=1.5),
    "warm-restarts-T0-zero": lambda L: L.CosineAnnealingWarmRestarts(_opt(), 0),
    "warm-restarts-T0-negative": lambda L: L.CosineAnnealingWarmRestarts(_opt(), -3),
    "warm-restarts-T0-float": lambda L: L.CosineAnnealingWarmRestarts(_opt(), 2.5),
    "warm-restarts-Tmult": lambda L: L.CosineAnnealingWarmRestarts(_opt(), 2, T_mult=0),
    "warm-restarts-Tmult-float": lambda L: L.CosineAnnealingWarmRestarts(_opt(), 2, T_mult=1.5),
    "warm-restarts-eta-min": lambda L: L.CosineAnnealingWarmRestarts(_opt(), 2, eta_min="0"),
    "warm-restarts-negative-epoch": lambda L: L.CosineAnnealingWarmRestarts(_opt(), 2).step(-1),
    "onecycle-no-total": lambda L: L.OneCycleLR(_opt(), 0.1),
    "onecycle-epochs-only": lambda L: L.OneCycleLR(_opt(), 0.1, epochs=3),
    "onecycle-total-zero": lambda L: L.OneCycleLR(_opt(), 0.1, total_steps=0),
    "onecycle-total-float": lambda L: L.OneCycleLR(_opt(), 0.1, total_steps=10.0),
    "onecycle-epochs-zero": lambda L: L.OneCycleLR(_opt(), 0.1, epochs=0, steps_per_epoch=5),
    "onecycle-steps-negative": lambda L: L.OneCycleLR(_opt(), 0.1, epochs=2, steps_per_epoch=-5),
    "onecycle-pct-high": lambda L: L.OneCycleLR(_opt(), 0.1, 10, pct_start=1.5),
    "onecycle-pct-int": lambda L: L.OneCycleLR(_opt(), 0.1, 10, pct_start=1),
    "onecycle-anneal": lambda L: L.OneCycleLR(_opt(), 0.1, 10, anneal_strategy="exp"),
    "onecycle-max-lr-length": lambda L: L.OneCycleLR(_opt(), [0.1], 10),
    "onecycle-momentum-length": lambda L: L.OneCycleLR(_opt(), 0.1, 10, base_momentum=[0.8] * 3),
    "onecycle-no-momentum": lambda L: L.OneCycleLR(_adagrad(), 0.1, 10),
    "onecycle-overstep": _overstep,
    "cyclic-mode": lambda L: L.CyclicLR(_opt(), 0.01, 0.1, mode="sine"),
    "cyclic-base-lr-length": lambda L: L.CyclicLR(_opt(), [0.01] * 3, 0.1),
    "cyclic-max-lr-length": lambda L: L.CyclicLR(_opt(), 0.01, [0.1]),
    "cyclic-momentum-lengths": lambda L: L.CyclicLR(_opt(), 0.01, 0.1, base_momentum=[0.8], max_momentum=[0.9]),
    "cyclic-no-momentum": lambda L: L.CyclicLR(_adagrad(), 0.01, 0.1),
    "plateau-factor": lambda L: L.ReduceLROnPlateau(_opt(), factor=1.0),
    "plateau-mode": lambda L: L.ReduceLROnPlateau(_opt(), mode="minimum"),
    "plateau-threshold-mode": lambda L: L.ReduceLROnPlateau(_opt(), threshold_mode="relative"),
    "plateau-min-lr-length": lambda L: L.ReduceLROnPlateau(_opt(), min_lr=[0.0]),
    "plateau-group-added": _plateau_group_added,
    "sequential-empty": lambda L: L.SequentialLR(_opt(), [], []),
    "sequential-milestones": lambda L: (lambda o: L.SequentialLR(o, [L.StepLR(o, 2), L.StepLR(o, 3)], [1, 2]))(_opt()),
    "sequential-plateau": lambda L: (lambda o: L.SequentialLR(o, [L.StepLR(o, 2), L.ReduceLROnPlateau(o)], [3]))(_opt()),
    "sequential-other-optimizer": lambda L: L.SequentialLR(_opt(), [L.StepLR(_opt(), 2)], []),
    "sequential-not-scheduler": lambda L: L.SequentialLR(_opt(), [object()], []),
    "chained-empty": lambda L: L.ChainedScheduler([]),
    "chained-plateau": lambda L: (lambda o: L.ChainedScheduler([L.StepLR(o, 2), L.ReduceLROnPlateau(o)]))(_opt()),
    "chained-other-optimizer": lambda L: L.ChainedScheduler([L.StepLR(_opt(), 2), L.StepLR(_opt(), 2)]),
    "chained-not-scheduler": lambda L: L.ChainedScheduler([object()]),
    "base-get-lr": lambda L: L.LRScheduler(_opt()),
}


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value)


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_errors_match_torch(case):
    ref = _raised(lambda: case(T))
    assert _raised(lambda: case(O)) == ref


# ------------------------------------------------------------------ API shape
def _torch_counterpart(name):
    return getattr(T, name)


@pytest.mark.parametrize("name", O.__all__ + ["_LRScheduler"])
def test_subclasses_torch_and_owns_its_logic(name):
    ours, theirs = getattr(O, name), _torch_counterpart(name)
    assert ours is not theirs and ours.__module__ == "optimlab.lr_scheduler"
    assert issubclass(ours, theirs) and issubclass(ours, T.LRScheduler)
    assert issubclass(ours, O.LRScheduler)
    # every method/attribute torch defines on the class (or its base) is
    # defined by optimlab: no torch scheduling logic is inherited
    for klass in (theirs, T.LRScheduler):
        for attr in vars(klass):
            if attr.startswith("__") and attr not in ("__init__",):
                continue
            owner = next(k for k in ours.__mro__ if attr in vars(k))
            assert owner.__module__ == "optimlab.lr_scheduler", f"{name}.{attr} comes from {owner}"
    if name not in ("LRScheduler", "_LRScheduler"):
        assert inspect.signature(ours.__init__).parameters.keys() == inspect.signature(theirs.__init__).parameters.keys()
        ours_defaults = {k: p.default for k, p in inspect.signature(ours.__init__).parameters.items()}
        theirs_defaults = {k: p.default for k, p in inspect.signature(theirs.__init__).parameters.items()}
        assert ours_defaults == theirs_defaults


def test_reexports_and_alias():
    assert set(O.__all__) == set(T.__all__)
    assert optimlab.lr_scheduler is O
    assert O._LRScheduler.__name__ == "_LRScheduler"
    assert isinstance(O.StepLR(make_opt(SGD), 2), T.StepLR)
    assert isinstance(O.ReduceLROnPlateau(make_opt(SGD)), T.ReduceLROnPlateau)


def test_user_subclass_of_base():
    """A custom scheduler written against optimlab's base works like torch's."""

    def make(base):
        class Halving(base):
            def get_lr(self):
                return [b * 0.5 ** self.last_epoch for b in self.base_lrs]

        opt = make_opt(torch.optim.SGD)
        sched = Halving(opt)
        out = []
        for _ in range(5):
            opt.step()
            sched.step()
            out.append(sched.get_last_lr())
        return out

    assert make(O.LRScheduler) == make(T.LRScheduler) == [[0.1 * 0.5**k, 0.03 * 0.5**k] for k in range(1, 6)]


def test_a_plain_callable_step_is_wrapped_and_still_called():
    """A user's own ``optimizer.step`` (a plain function, not a method) keeps working once a
    scheduler wraps it (it raised NameError when called)."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = optimlab.SGD([p], lr=0.1)
    calls = []
    opt.step = lambda *a, **k: calls.append(a)
    sched = optimlab.lr_scheduler.StepLR(opt, 1)
    opt.step()
    sched.step()
    assert calls == [()] and opt._opt_called
