"""The benchmark tool runs, reports unavailable backends as skipped, and validates names."""

import json

import pytest

from optimlab.bench import cli


def test_quick_run_writes_results(tmp_path, capsys):
    out = tmp_path / "r"
    cli.main(["--quick", "--optimizers", "SGD,Adam", "--backends",
              "optimlab-default,optimlab-forloop,optimlab-foreach,torch-forloop,torch-fused",
              "--iters", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 10 and (out / "results.csv").exists() and (out / "results.png").exists()
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["median_ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 for r in ok)
    adam = next(r for r in ok if r["optimizer"] == "Adam" and r["backend"] == "optimlab-forloop")
    assert adam["state_mb"] == pytest.approx(2 * 4 * (1 << 18) / 2**20)  # exp_avg + exp_avg_sq, fp32
    assert "measured copy bandwidth" in printed and "optimlab-forloop" in printed


def test_unavailable_backend_is_a_skipped_row(tmp_path):
    cli.main(["--quick", "--optimizers", "Rprop", "--backends", "torch-fused",
              "--out", str(tmp_path), "--no-plot"])
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["status"].startswith("skipped") and row["median_ms"] is None


@pytest.mark.parametrize("flag,value,what", [
    ("--optimizers", "Adamm", "optimizer"), ("--backends", "optimlab-cuda", "backend"),
    ("--presets", "bert", "preset"), ("--dtypes", "int8", "dtype"), ("--device", "tpu", "device"),
])
def test_bad_names_list_the_valid_ones(flag, value, what, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse([flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert what in err and value in err and "valid:" in err


def test_update_defaults_picks_the_fastest_explicit_backend(tmp_path):
    rows = [
        cli.Row("Adam", "optimlab-forloop", "custom", "float32", "cpu", 1, 1, median_ms=3.0),
        cli.Row("Adam", "optimlab-foreach", "custom", "float32", "cpu", 1, 1, median_ms=2.0),
        cli.Row("Adam", "optimlab-default(foreach)", "custom", "float32", "cpu", 1, 1, median_ms=1.0),
        cli.Row("SGD", "optimlab-cpp", "custom", "float32", "cpu", 1, 1, status="skipped: none"),
        cli.Row("SGD", "optimlab-forloop", "custom", "float32", "cpu", 1, 1, median_ms=5.0),
        cli.Row("SGD", "torch-fused", "custom", "float32", "cpu", 1, 1, median_ms=0.1),
    ]
    assert cli.best_backends(rows) == {"adam": {"float32": "foreach"}, "sgd": {"float32": "forloop"}}
    args = cli.parse(["--device", "cpu"])
    path = tmp_path / "defaults.json"
    cli.update_defaults(rows, args, 10.0, path=path)
    table = json.loads(path.read_text())["cpu"]
    assert table["choices"]["adam"] == {"float32": "foreach"} and "device" in table and "command" in table


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_cpu_fused_benchmark_script_runs(tmp_path, cache):
    """benchmarks/bench_cpu_fused.py (issue 5's table) on a tiny problem: one row per optimizer."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_fused.py"
    spec = importlib.util.spec_from_file_location("bench_cpu_fused", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cpu.md"
    assert bench.main(["--params", "2048", "--tensors", "4", "--rounds", "1", "--steps", "2",
                       "--warmup", "1", "--only", "SGD", "ASGD", "--cache", cache, "--out", str(out)]) == 0
    text = out.read_text()
    assert f"cache {cache}" in text
    for name in ("SGD", "ASGD"):
        rows = [ln for ln in text.splitlines() if ln.startswith(f"| {name} |")]
        assert len(rows) == 2 and all(ln.endswith("x |") for ln in rows), rows


def test_cpu_isa_benchmark_script_runs(tmp_path):
    """benchmarks/bench_cpu_isa.py on a tiny problem (builds each instruction set the CPU runs)."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("bench_cpu_isa", root / "bench_cpu_isa.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "isa.md"
    assert bench.main(["--params", "2048", "--tensors", "4", "--steps", "2", "--threads", "1",
                       "--only", "Rprop", "--out", str(out)]) == 0
    import optimlab.kernels.cpu as cpu
    assert cpu.load().capability == cpu.capability()  # the default build is back in use
    if out.exists():  # (a CPU without AVX2 has nothing to compare)
        assert any(ln.startswith("| Rprop | 1 |") for ln in out.read_text().splitlines())


def test_step_overhead_benchmark_script_runs(capsys):
    """benchmarks/bench_step_overhead.py (CHANGELOG's host-overhead figures): one cell per case."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step_overhead.py"
    spec = importlib.util.spec_from_file_location("bench_step_overhead", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--steps", "1", "--threads", "1", "--label", "smoke"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("smoke") and line.count(" ms") == len(bench.CASES)
