"""examples/low_precision.py and benchmarks/bench_low_precision.py, smoke-tested with tiny
settings: every mode trains, memory per parameter is what the dtypes say, the bf16 modes
start from the same (rounded) weights, bad CLI values are argparse errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--task", "gpt", "--steps", "3", "--batch", "2", "--d-model", "8", "--layers", "1",
        "--context", "8", "--eval-every", "2"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def example():
    return _load("optimlab_example_low_precision", ROOT / "examples" / "low_precision.py")


@pytest.fixture(autouse=True)
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# params + grads + AdamW's exp_avg and exp_avg_sq, per element (0-dim step tensors on top)
BYTES = {"fp32": 16, "bf16": 8, "bf16+kahan": 10, "bf16+sr": 8, "bf16+kahan+f32state": 14,
         "mixed": 16}


@pytest.mark.parametrize("mode", list(BYTES))
def test_every_mode_trains_tiny_gpt(example, mode, capsys):
    result = example.main(TINY + ["--mode", mode])
    assert "held-out" in capsys.readouterr().out
    assert len(result["train_losses"]) == 3
    assert [s for s, _ in result["heldout"]] == [2, 3]
    assert all(math.isfinite(x) for x in result["train_losses"])
    mem = result["memory"]
    assert mem["numel"] > 0
    assert BYTES[mode] <= mem["per_param"] < BYTES[mode] + 1.0
    assert (mem["kahan_comp"] > 0) == mode.startswith("bf16+kahan")


def test_same_init_same_batches(example):
    task = example.gpt_task(batch=2, context=8, d=8, layers=1)
    a = example.train(task, "fp32", 2, 1e-3)
    # the first loss is before any update: the same init (the bf16 modes round it)
    for mode in ("bf16", "mixed"):
        b = example.train(task, mode, 2, 1e-3)
        assert b["train_losses"][0] == pytest.approx(a["train_losses"][0], rel=2e-2)
    assert example.train(task, "fp32", 2, 1e-3)["train_losses"] == a["train_losses"]


def test_digits_task(example):
    pytest.importorskip("sklearn")
    result = example.main(["--task", "digits", "--mode", "bf16+sr", "--steps", "2", "--hidden", "8",
                           "--eval-every", "1"])
    assert result["memory"]["per_param"] == pytest.approx(8, abs=1.0)
    assert math.isfinite(result["final_heldout_loss"])
    # one task object, several runs (as the benchmark does): the same batches each time
    task = example.digits_task(batch=500, hidden=8)  # 2 batches per epoch: runs cross epochs
    first = example.train(task, "fp32", 5, 1e-3)["train_losses"]
    assert example.train(task, "fp32", 5, 1e-3)["train_losses"] == first


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--steps", "x"), ("--batch", "-1"),
                                        ("--eval-every", "0"), ("--lr", "0"), ("--lr", "nan"),
                                        ("--d-model", "6")])
def test_bad_cli_values_are_argparse_errors(example, flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        example.main(TINY + [flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_benchmark_writes_its_outputs(tmp_path):
    pytest.importorskip("matplotlib")
    bench = _load("optimlab_bench_low_precision", ROOT / "benchmarks" / "bench_low_precision.py")
    out = tmp_path / "lp"
    bench.main(["--tasks", "gpt", "--modes", "fp32", "bf16+kahan", "--gpt-steps", "2",
                "--eval-every", "1", "--out", str(out)])
    doc = json.loads((tmp_path / "lp.json").read_text())
    runs = doc["tasks"]["gpt"]["runs"]
    assert list(runs) == ["fp32", "bf16+kahan"] and runs["fp32"]["train_vs_fp32_pct"] == 0
    md = (tmp_path / "lp.md").read_text()
    assert "| bf16+kahan |" in md and "B/param" in md
    assert (tmp_path / "lp.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        bench.main(["--gpt-steps", "0", "--out", str(out)])
