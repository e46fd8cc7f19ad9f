"""Backend resolution: flags, then OPTIMLAB_BACKEND, then the measured or preferred default."""

import warnings

import pytest
import torch

import optimlab
from optimlab import _dispatch


def _opt(**kw):
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    return optimlab.Adam([p], **kw)


@pytest.fixture
def no_measured(monkeypatch):
    monkeypatch.setattr(_dispatch, "measured_defaults", lambda: {})


@pytest.mark.parametrize("flags,name", [
    ({"foreach": True}, "foreach"), ({"foreach": False}, "forloop"), ({"fused": False}, "forloop"),
    ({"differentiable": True}, "forloop"),
])
def test_flags_win(flags, name, monkeypatch):
    monkeypatch.setenv("OPTIMLAB_BACKEND", "foreach" if name == "forloop" else "forloop")
    choice = _opt(**flags).backends()[0]
    assert choice.name == name and choice.reason


def test_env_overrides_default(monkeypatch):
    for name in ("forloop", "foreach"):
        monkeypatch.setenv("OPTIMLAB_BACKEND", name)
        assert _opt().backends()[0] == _dispatch.BackendChoice(name, f"OPTIMLAB_BACKEND={name}")


def test_unknown_env_value_lists_valid(monkeypatch):
    monkeypatch.setenv("OPTIMLAB_BACKEND", "cuda")
    with pytest.raises(ValueError, match="valid: forloop, foreach, triton, cpp"):
        _opt().backends()


def test_env_for_missing_implementation_warns_once_and_falls_back(monkeypatch, no_measured):
    monkeypatch.setenv("OPTIMLAB_BACKEND", "foreach")
    monkeypatch.setattr(_dispatch, "_warned", set())
    p = torch.nn.Parameter(torch.randn(2, 2))
    with pytest.warns(UserWarning, match="no foreach implementation of muon"):
        choice = optimlab.Muon([p]).backends()[0]
    assert choice.name == "forloop"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimlab.Muon([p]).backends()  # the second time is silent


def test_explicit_fused_request_for_missing_backend_raises(monkeypatch):
    monkeypatch.setitem(_dispatch._KERNELS["adam"], "cpp", lambda *a, **k: None)
    monkeypatch.setitem(_dispatch._AVAILABILITY, "cpp", lambda: "no compiler")
    opt = _opt(fused=True)
    with pytest.raises(RuntimeError, match="fused=True asks for the cpp backend on cpu.*no compiler"):
        opt.step()


def test_default_uses_measured_table(monkeypatch):
    table = {"cpu": {"device": "test cpu", "choices": {"adam": {"float32": "forloop", "float64": "foreach"}}}}
    monkeypatch.setattr(_dispatch, "measured_defaults", lambda: table)
    assert _opt().backends()[0] == _dispatch.BackendChoice("forloop", "measured fastest on test cpu")
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    assert optimlab.Adam([p]).backends()[0].name == "foreach"


def test_default_without_table_follows_preference(monkeypatch, no_measured):
    monkeypatch.setitem(_dispatch.DEFAULT_PREFERENCE, "cpu", ("foreach", "forloop"))
    assert _opt().backends()[0] == _dispatch.BackendChoice("foreach", "default on cpu")


def test_unavailable_preferred_backend_is_skipped_with_one_warning(monkeypatch, no_measured):
    monkeypatch.setitem(_dispatch._KERNELS["adam"], "cpp", lambda *a, **k: None)
    monkeypatch.setitem(_dispatch._AVAILABILITY, "cpp", lambda: "no compiler here")
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(UserWarning, match="no compiler here"):
        choice = _opt().backends()[0]
    assert choice.name == "foreach" and "no compiler here" in choice.reason


def test_unavailable_measured_backend_falls_back_to_the_next_measured(monkeypatch):
    """Without a working C++ build the CPU default is the next fastest measured backend for
    the group's size class (the for-loop for Adam in the committed table, not foreach, which
    measured 2x slower), with one warning; with no measurement, the preference order."""
    monkeypatch.setitem(_dispatch._AVAILABILITY, "cpp", lambda: "no compiler here")
    monkeypatch.setattr(_dispatch, "_warned", set())
    ms = {"cpp": 1.0, "foreach": 4.0, "forloop": 2.0}
    entry = {"tensors_bucket": 0, "numel_bucket": 0, "backend": "cpp",
             "measured": [{"ms": ms}, {"ms": {**ms, "forloop": 5.0}}, {"ms": {**ms, "forloop": 3.0}}]}
    table = {"cpu": {"device": "test cpu", "by_size": {"adam": {"float32": {"t0-n0": entry}}}}}
    monkeypatch.setattr(_dispatch, "measured_defaults", lambda: table)
    with pytest.warns(UserWarning, match="no compiler here"):
        choice = _opt().backends()[0]
    assert choice == _dispatch.BackendChoice(
        "forloop", "measured fastest available on test cpu (no compiler here)")
    entry["measured"][0]["ms"]["forloop"] = 9.0  # now foreach is faster by geometric mean
    assert _opt().backends()[0].name == "foreach"
    p = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))  # no float64 measurement
    assert optimlab.Adam([p]).backends()[0].name == _dispatch.DEFAULT_PREFERENCE["cpu"][1]


def test_committed_cpu_table_falls_back_to_the_for_loop_for_adam(monkeypatch):
    monkeypatch.setitem(_dispatch._AVAILABILITY, "cpp", lambda: "no compiler here")
    monkeypatch.setattr(_dispatch, "_warned", set())
    with pytest.warns(UserWarning, match="no compiler here"):
        assert _opt().backends()[0].name == "forloop"


def test_register_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        _dispatch.register("adam", "gpu")
