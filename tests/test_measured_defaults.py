"""Which table of measured defaults decides (this machine's, else the committed one), by size class."""

import json

import pytest
import torch

import optimlab
from optimlab import _dispatch, _measured
from optimlab.bench import cli


def _entry(device, by_class):
    return {"format": 2, "device": device, "by_size": {"adam": {"float32": {
        k: {"backend": b, "tensors_bucket": int(k[1]), "numel_bucket": int(k[4])} for k, b in by_class.items()}}},
        "choices": {"adam": {"float32": "forloop"}}}


def _adam(tensors, numel):
    params = [torch.nn.Parameter(torch.zeros(numel)) for _ in range(tensors)]
    return optimlab.Adam(params).backends()[0]


def test_this_machines_table_decides_by_size_class(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMLAB_DEFAULTS_DIR", str(tmp_path))
    path = _measured.user_table_path(torch.device("cpu"))
    # t1-n2: 8..63 tensors of 64..511 elements; t0-n4: 1..7 tensors of 4096..32767
    path.write_text(json.dumps({"cpu": _entry("test cpu", {"t1-n2": "foreach", "t0-n4": "forloop"})}))
    _measured.user_table.cache_clear()
    many_small, few_large = _adam(16, 100), _adam(2, 5000)
    assert many_small.name == "foreach" and few_large.name == "forloop"
    assert "this machine's table" in many_small.reason and str(path) in many_small.reason
    # the nearest measured class for a size not measured: t3-n1 is nearer t1-n2
    assert _adam(600, 10).name == "foreach"


def test_committed_table_decides_for_cpu_without_own_table(monkeypatch):
    table = {"cpu": _entry("some cpu", {"t1-n2": "foreach"})}
    monkeypatch.setattr(_dispatch, "measured_defaults", lambda: table)
    choice = _adam(16, 100)
    assert choice == _dispatch.BackendChoice("foreach", "measured fastest on some cpu")


def test_committed_cuda_entry_applies_only_to_a_gpu_of_its_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_measured, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    entry = {"device": "NVIDIA H100 80GB HBM3", "choices": {"adam": {"float32": "forloop"}}}
    assert _measured.committed_applies(entry, "cuda", 0)
    assert not _measured.committed_applies(dict(entry, device="NVIDIA A100-SXM4-80GB"), "cuda", 0)
    assert _measured.committed_applies(dict(entry, device="any"), "cpu")


def test_update_defaults_needs_a_passing_selfcheck(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMLAB_DEFAULTS_DIR", str(tmp_path / "tables"))
    args = ["--optimizers", "SGD", "--backends", "optimlab-forloop,optimlab-foreach", "--total", "256",
            "--count", "2", "--quick", "--no-plot", "--out", str(tmp_path / "out"), "--update-defaults"]
    path = _measured.user_table_path(torch.device("cpu"))
    monkeypatch.setattr(cli, "selfcheck_failure", lambda device, optimizers: "selfcheck: FAIL (1 failed)")
    assert cli.main(args) == 1 and not path.exists()
    monkeypatch.setattr(cli, "selfcheck_failure", lambda device, optimizers: None)
    assert cli.main(args) == 0
    entry = json.loads(path.read_text())["cpu"]
    assert entry["by_size"]["sgd"]["float32"]


def test_group_size_is_read_only_when_the_size_classes_disagree():
    """The group's element count (a pass over its params) is needed only where the measured
    size classes picked different backends."""
    def entry(small, large):
        return {"by_size": {"adam": {"float32": {
            "t4-n2": {"backend": small, "tensors_bucket": 4, "numel_bucket": 2, "measured": []},
            "t2-n5": {"backend": large, "tensors_bucket": 2, "numel_bucket": 5, "measured": []},
        }}}}

    calls = []

    def numel():
        calls.append(1)
        return 4096 * 256

    assert _measured.lookup(entry("cpp", "cpp"), "adam", "float32", 4096, numel) == "cpp"
    assert calls == []
    assert _measured.lookup(entry("cpp", "forloop"), "adam", "float32", 4096, numel) == "cpp"
    assert _measured.lookup(entry("cpp", "forloop"), "adam", "float32", 64, lambda: 64 * 65536) == "forloop"
    assert calls == [1]
