"""optimlab.swa_utils against torch.optim.swa_utils."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as TL
import torch.optim.swa_utils as T

import optimlab
import optimlab.lr_scheduler as OL
import optimlab.swa_utils as O

SGD = optimlab.SGD if hasattr(optimlab, "SGD") else torch.optim.SGD


def make_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
    ).double()


def model_states(n=6, seed=0):
    """A deterministic sequence of (model, batch) training snapshots: params
    moved and BatchNorm statistics updated each time."""
    net = make_net(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(n):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.1)
        net.train()
        net(torch.randn(16, 4, generator=gen, dtype=torch.float64))
        yield net


def assert_modules_equal(a, b, exact=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-12, atol=0)


def _raised_or_none(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - compared with torch's
        return type(e), str(e)
    return None


AVG_CONFIGS = {
    "swa-default": lambda L: {},
    "ema-multi": lambda L: {"multi_avg_fn": L.get_ema_multi_avg_fn(0.9)},
    "swa-multi": lambda L: {"multi_avg_fn": L.get_swa_multi_avg_fn()},
    "ema-avg-fn": lambda L: {"avg_fn": L.get_ema_avg_fn(0.75)},
    "swa-avg-fn": lambda L: {"avg_fn": L.get_swa_avg_fn()},
    "custom-avg-fn": lambda L: {"avg_fn": lambda avg, cur, n: 0.5 * avg + 0.5 * cur + n * 1e-3},
}


@pytest.mark.parametrize("use_buffers", [False, True], ids=["params", "params+buffers"])
@pytest.mark.parametrize("config", AVG_CONFIGS.values(), ids=AVG_CONFIGS.keys())
def test_averaged_model_matches_torch(config, use_buffers):
    ref = T.AveragedModel(make_net(), **config(T), use_buffers=use_buffers)
    got = O.AveragedModel(make_net(), **config(O), use_buffers=use_buffers)
    first = None
    for k, net in enumerate(model_states()):
        ref_err = _raised_or_none(lambda: ref.update_parameters(net))
        got_err = _raised_or_none(lambda: got.update_parameters(net))
        assert got_err == ref_err
        if ref_err is not None:  # torch's multi-tensor SWA cannot average integer buffers
            assert "addcdiv" in ref_err[1] and use_buffers
            return
        assert_modules_equal(ref, got)  # every parameter and buffer, bitwise
        if k == 0:
            first = copy.deepcopy(got.module.state_dict())
    assert int(got.n_averaged) == 6
    # averaging happened: the result is neither the first nor the last snapshot
    last = net.state_dict()
    w = "0.weight"
    assert not torch.equal(got.module.state_dict()[w], first[w])
    assert not torch.equal(got.module.state_dict()[w], last[w])
    x = torch.randn(5, 4, dtype=torch.float64)
    ref.eval(), got.eval()
    assert torch.equal(ref(x), got(x))


def test_averaged_model_is_the_mean_and_state_dict_loads_across():
    nets = [copy.deepcopy(n) for n in model_states(4)]
    avg = O.AveragedModel(nets[0])
    for n in nets:
        avg.update_parameters(n)
    mean = torch.stack([n[0].weight for n in nets]).mean(0)
    torch.testing.assert_close(avg.module[0].weight, mean, rtol=1e-12, atol=1e-15)
    # buffers are copied from the latest model when use_buffers=False
    assert torch.equal(avg.module[1].running_mean, nets[-1][1].running_mean)
    # state dicts interchange with torch's AveragedModel
    ref = T.AveragedModel(make_net(5))
    buf = io.BytesIO()
    torch.save(avg.state_dict(), buf)
    buf.seek(0)
    ref.load_state_dict(torch.load(buf))
    assert_modules_equal(ref, avg)


def test_mixed_dtypes_one_foreach_call_per_group(monkeypatch):
    """The multi-tensor EMA runs one foreach pass per (device, dtype) group, and
    the default SWA one foreach add per group, with torch's numbers."""

    def mixed():
        torch.manual_seed(3)
        return torch.nn.ModuleList([torch.nn.Linear(3, 3).double(), torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)])

    def perturbed(model, k):
        model = copy.deepcopy(model)
        with torch.no_grad():
            for i, p in enumerate(model.parameters()):
                p.add_(0.1 * (k + 1) * (i + 1))
        return model

    base = mixed()
    snapshots = [perturbed(base, k) for k in range(4)]
    for config in ("ema", "swa"):
        ref = T.AveragedModel(base, **({"multi_avg_fn": T.get_ema_multi_avg_fn(0.8)} if config == "ema" else {}))
        got = O.AveragedModel(base, **({"multi_avg_fn": O.get_ema_multi_avg_fn(0.8)} if config == "ema" else {}))
        for snap in snapshots:
            ref.update_parameters(snap)
        calls = {"lerp": 0, "add": 0}
        real_lerp, real_add = torch._foreach_lerp_, torch._foreach_add_

        def count(name, real):
            def wrapper(*args, **kwargs):
                calls[name] += 1
                return real(*args, **kwargs)

            return wrapper

        monkeypatch.setattr(torch, "_foreach_lerp_", count("lerp", real_lerp))
        monkeypatch.setattr(torch, "_foreach_add_", count("add", real_add))
        for snap in snapshots:
            got.update_parameters(snap)
        monkeypatch.undo()
        assert_modules_equal(ref, got)
        # 3 updates after the initial copy, 2 dtype groups each
        assert calls == ({"lerp": 6, "add": 0} if config == "ema" else {"lerp": 0, "add": 6})


def test_averaged_model_device_and_argument_checks():
    net = make_net()
    got = O.AveragedModel(net, device="cpu")
    assert got.n_averaged.device.type == "cpu" and got.module is not net
    msgs = [
        _raised_or_none(lambda L=L: L.AveragedModel(net, avg_fn=L.get_swa_avg_fn(), multi_avg_fn=L.get_swa_multi_avg_fn()))
        for L in (T, O)
    ]
    assert msgs[0] == msgs[1] == (AssertionError, "Only one of avg_fn and multi_avg_fn should be provided")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128, torch.int64])
@pytest.mark.parametrize("n", [3, torch.tensor(3)], ids=["int-n", "tensor-n"])
def test_multi_avg_fns_match_torch(dtype, n):
    gen = torch.Generator().manual_seed(0)

    def tensors():
        return [(torch.randn(5, generator=gen) * 10).to(dtype) for _ in range(3)]

    avg, cur = tensors(), tensors()
    for name, args in (("get_ema_multi_avg_fn", (0.7,)), ("get_swa_multi_avg_fn", ())):
        ref, got = [a.clone() for a in avg], [a.clone() for a in avg]
        ref_err = _raised_or_none(lambda: getattr(T, name)(*args)(ref, cur, n))
        got_err = _raised_or_none(lambda: getattr(O, name)(*args)(got, cur, n))
        assert got_err == ref_err
        if ref_err is None:
            assert all(torch.equal(r, g) for r, g in zip(ref, got))
            assert not all(torch.equal(r, a) for r, a in zip(ref, avg))  # it did update
    for name, args in (("get_ema_avg_fn", (0.7,)), ("get_swa_avg_fn", ())):
        ref = getattr(T, name)(*args)(avg[0], cur[0], n)
        got = getattr(O, name)(*args)(avg[0], cur[0], n)
        assert torch.equal(ref, got)


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_bad_decay_matches_torch(decay):
    for name in ("get_ema_multi_avg_fn", "get_ema_avg_fn"):
        ref = _raised_or_none(lambda: getattr(T, name)(decay))
        assert ref is not None and _raised_or_none(lambda: getattr(O, name)(decay)) == ref


# ------------------------------------------------------------------ update_bn
@pytest.mark.parametrize("batches", ["tensors", "tuples"])
@pytest.mark.parametrize("was_training", [True, False])
def test_update_bn_matches_torch(batches, was_training):
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(10, 4, generator=gen, dtype=torch.float64) * 3 + 1 for _ in range(5)]
    loader = data if batches == "tensors" else [(x, torch.zeros(10)) for x in data]
    nets = {}
    for L in (T, O):
        net = make_net()
        net[1].momentum = 0.3
        net.train(was_training)
        L.update_bn(loader, net, device=torch.device("cpu"))
        assert net[1].momentum == 0.3 and net.training == was_training
        nets[L] = net
    assert_modules_equal(nets[T], nets[O])
    fresh = make_net()
    assert not torch.equal(nets[O][1].running_var, fresh[1].running_var)  # statistics were recomputed
    # cumulative average over all batches (momentum=None)
    torch.testing.assert_close(nets[O][1].num_batches_tracked, torch.tensor(5))


def test_update_bn_on_averaged_model_and_without_bn():
    states = list(copy.deepcopy(n) for n in model_states(3))
    loader = [torch.randn(8, 4, dtype=torch.float64) for _ in range(3)]
    models = {}
    for L in (T, O):
        avg = L.AveragedModel(states[0])
        for s in states:
            avg.update_parameters(s)
        L.update_bn(loader, avg)
        models[L] = avg
    assert_modules_equal(models[T], models[O])
    plain = torch.nn.Linear(2, 2)
    before = copy.deepcopy(plain.state_dict())
    O.update_bn([torch.randn(3, 2)], plain)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


# ------------------------------------------------------------------ SWALR
def make_opt(cls=torch.optim.SGD, tensor_lr=False):
    lr = (lambda v: torch.tensor(v, dtype=torch.float64)) if tensor_lr else float
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    kwargs = {"foreach": False} if tensor_lr and cls is torch.optim.SGD else {}
    return cls([{"params": [p1], "lr": lr(0.1)}, {"params": [p2], "lr": lr(0.04)}], lr=lr(0.1), **kwargs)


def _swalr_trace(S, L, opt_cls, kwargs, tensor_lr, n=60, switch=25, resume=40):
    """Cosine annealing, then SWALR from ``switch`` (the usual SWA recipe),
    with a save/rebuild/load of optimizer and SWALR at ``resume``."""
    opt = make_opt(opt_cls, tensor_lr)
    cosine = L.CosineAnnealingLR(opt, T_max=30)
    swa = S.SWALR(opt, **kwargs)
    trace = []
    for i in range(n):
        if i == resume:
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "swa": swa.state_dict()}, buf)
            buf.seek(0)
            ck = torch.load(buf, weights_only=False)
            opt = make_opt(opt_cls, tensor_lr)
            swa = S.SWALR(opt, **kwargs)
            opt.load_state_dict(ck["opt"])
            swa.load_state_dict(ck["swa"])
        opt.step()
        (cosine if i < switch else swa).step()
        trace.append([float(g["lr"]) for g in opt.param_groups] + [float(x) for x in swa.get_last_lr()])
    return trace, swa.state_dict()


SWALR_CONFIGS = {
    "cos-10": {"swa_lr": 0.05},
    "linear-5-list": {"swa_lr": [0.02, 0.01], "anneal_epochs": 5, "anneal_strategy": "linear"},
    "cos-0": {"swa_lr": 0.03, "anneal_epochs": 0},
    "linear-1": {"swa_lr": 0.2, "anneal_epochs": 1, "anneal_strategy": "linear"},
}


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("kwargs", SWALR_CONFIGS.values(), ids=SWALR_CONFIGS.keys())
def test_swalr_matches_torch(kwargs, tensor_lr):
    ref, ref_sd = _swalr_trace(T, TL, torch.optim.SGD, kwargs, tensor_lr)
    got, got_sd = _swalr_trace(O, OL, SGD, kwargs, tensor_lr)
    for r, g in zip(ref, got, strict=True):
        assert g == pytest.approx(r, rel=1e-12, abs=0)
    assert ref_sd.keys() == got_sd.keys() and "anneal_func" not in got_sd
    swa_lrs = kwargs["swa_lr"] if isinstance(kwargs["swa_lr"], list) else [kwargs["swa_lr"]] * 2
    assert got[-1][:2] == pytest.approx(swa_lrs, rel=1e-12)  # reached and held swa_lr
    assert len({round(t[0], 12) for t in got}) > 5


def test_swalr_types_and_warning():
    assert issubclass(O.SWALR, T.SWALR) and issubclass(O.SWALR, TL.LRScheduler)
    assert issubclass(O.AveragedModel, T.AveragedModel) and issubclass(O.AveragedModel, torch.nn.Module)
    for ours, theirs in ((O.SWALR, T.SWALR), (O.AveragedModel, T.AveragedModel)):
        for attr in vars(theirs):
            if not attr.startswith("__") or attr == "__init__":
                owner = next(k for k in ours.__mro__ if attr in vars(k))
                assert owner.__module__.startswith("optimlab."), (ours, attr)

    def get_lr_warnings(S):
        sched = S.SWALR(make_opt(), 0.05)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _call_get_lr(sched)
        return [(w.category, str(w.message), w.filename, w.lineno) for w in caught]

    ref = get_lr_warnings(T)
    assert ref and get_lr_warnings(O) == ref


def _call_get_lr(sched):
    return sched.get_lr()


SWALR_ERRORS = {
    "strategy": lambda S: S.SWALR(make_opt(), 0.05, anneal_strategy="exp"),
    "epochs-negative": lambda S: S.SWALR(make_opt(), 0.05, anneal_epochs=-1),
    "epochs-float": lambda S: S.SWALR(make_opt(), 0.05, anneal_epochs=2.5),
    "swa-lr-length": lambda S: S.SWALR(make_opt(), [0.05]),
    "not-an-optimizer": lambda S: S.SWALR(object(), 0.05),
}


@pytest.mark.parametrize("case", SWALR_ERRORS.values(), ids=SWALR_ERRORS.keys())
def test_swalr_errors_match_torch(case):
    ref = _raised_or_none(lambda: case(T))
    assert ref is not None and _raised_or_none(lambda: case(O)) == ref


def test_public_names():
    assert set(O.__all__) == set(T.__all__)
    assert optimlab.swa_utils is O
    for name in O.__all__:
        assert getattr(O, name) is not getattr(T, name)
