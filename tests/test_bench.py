"""The benchmark tool: runs, reports spread, writes rows as they come, validates its options,
and keys the measured defaults by size class."""

import csv
import importlib
import json
import subprocess
import sys
import time

import pytest
import torch

from optimlab import _dispatch
from optimlab.bench import cli, defaults

measure = importlib.import_module("optimlab.bench.measure")  # (optimlab.bench.measure is also a function)

TINY = ["--total", "4096", "--count", "4", "--warmup", "1", "--rounds", "3", "--min-time", "0.005"]


@pytest.fixture
def fixed_copy(monkeypatch):
    """Skip the 256 MiB copy-bandwidth measurement."""
    monkeypatch.setattr(cli, "copy_bandwidth", lambda device: 10.0)


def test_quick_run_writes_results(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["--quick", "--optimizers", "SGD,Adam", "--backends",
                     "optimlab-default,optimlab-forloop,optimlab-foreach,torch-forloop,torch-fused",
                     "--min-time", "0.02", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert len(rows) == 10 and (out / "results.csv").exists() and (out / "results.png").exists()
    assert len((out / "results.jsonl").read_text().splitlines()) == 10
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["median_ms"] > 0 and r["gbps"] > 0 and r["pct_copy"] > 0 for r in ok)
    adam = next(r for r in ok if r["optimizer"] == "Adam" and r["backend"] == "optimlab-forloop")
    assert adam["state_mb"] == pytest.approx(2 * 4 * (1 << 18) / 2**20)  # exp_avg + exp_avg_sq, fp32
    assert "measured copy bandwidth" in printed and "optimlab-forloop" in printed


def test_rows_report_their_spread(tmp_path, capsys, fixed_copy):
    out = tmp_path / "r"
    assert cli.main(["--optimizers", "SGD", "--backends", "optimlab-forloop,torch-forloop", *TINY,
                     "--out", str(out), "--no-plot"]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[2]
    assert "median ms" in header and "IQR %" in header
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"median_ms", "q1_ms", "q3_ms", "iqr_pct", "min_ms", "samples", "size_class"} <= set(rows[0])
    for r in rows:
        assert float(r["min_ms"]) <= float(r["q1_ms"]) <= float(r["median_ms"]) <= float(r["q3_ms"])
        assert int(r["samples"]) >= 3 and float(r["iqr_pct"]) >= 0 and r["size_class"] == "t0-n3"
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["settings"]["rounds"] == 3 and meta["interrupted"] is False


def test_noisy_rows_are_flagged(capsys):
    quiet = measure.Row("SGD", "torch-forloop", "custom", "float32", "cpu", 8, 2, median_ms=1.0, gbps=1.0,
                        pct_copy=10.0, state_mb=0.0, q1_ms=0.98, q3_ms=1.02, iqr_pct=4.0, samples=9)
    noisy = measure.Row("SGD", "optimlab-cpp", "custom", "float32", "cpu", 8, 2, median_ms=1.0, gbps=1.0,
                        pct_copy=10.0, state_mb=0.0, q1_ms=0.9, q3_ms=1.3, iqr_pct=40.0, samples=9)
    text = cli.table([quiet, noisy], 10.0)
    assert "40.0!" in text and "4.0!" not in text
    warning = cli.noise_warning([quiet, noisy])
    assert warning.startswith("warning: 1 of 2 rows") and "optimlab-cpp" in warning
    assert cli.noise_warning([quiet]) is None


def test_variants_of_a_cell_take_turns(monkeypatch):
    """Interleaved: A B, B A, A B, ... not A A A ... B B B."""
    order = []
    names = {}

    def block(timer, number, samples=1, typical=0.0):
        order.append(names.setdefault(id(timer), len(names)))
        return [1e-3]

    monkeypatch.setattr(measure, "_cpu_block", block)
    rows = measure.measure_cell("SGD", ["optimlab-forloop", "torch-forloop"], [(64,)], "custom",
                                torch.float32, torch.device("cpu"), 10.0, warmup=1, rounds=4, min_time=0.0)
    assert [r.samples for r in rows] == [4, 4] and all(r.median_ms == pytest.approx(1.0) for r in rows)
    assert order == [0, 1, 1, 0, 0, 1, 1, 0]


def test_an_interrupted_run_keeps_its_rows(tmp_path, monkeypatch, capsys, fixed_copy):
    """Rows are written as each cell finishes: Ctrl-C in the second cell keeps the first's."""
    real = measure._cpu_block
    timers = []

    def block(timer, *args):
        if timer not in timers:
            timers.append(timer)
        if len(timers) > 1:  # the second cell's first turn
            raise KeyboardInterrupt
        return real(timer, *args)

    monkeypatch.setattr(measure, "_cpu_block", block)
    out = tmp_path / "r"
    assert cli.main(["--optimizers", "SGD,Adam", "--backends", "optimlab-forloop", *TINY,
                     "--out", str(out), "--no-plot"]) == 130
    with open(out / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["optimizer"] == "SGD" and row["status"] == "ok" and float(row["median_ms"]) > 0
    assert [json.loads(ln)["optimizer"] for ln in (out / "results.jsonl").read_text().splitlines()] == ["SGD"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["meta"]["interrupted"] is True and [r["optimizer"] for r in saved["rows"]] == ["SGD"]
    assert "interrupted" in capsys.readouterr().err


def test_unavailable_backend_is_a_skipped_row(tmp_path, fixed_copy):
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


@pytest.mark.parametrize("argv,message", [
    (["--count", "0"], "argument --count: must be at least 1, got 0"),
    (["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (["--total", "-5"], "argument --total: must be at least 1, got -5"),
    (["--warmup", "x"], "argument --warmup: expected an integer, got 'x'"),
    (["--iters", "1.5"], "argument --iters: expected an integer, got '1.5'"),
    (["--threads", "0"], "argument --threads: must be at least 1, got 0"),
    (["--min-time", "0"], "argument --min-time: must be a positive number of seconds, got '0'"),
    (["--min-time", "nan"], "argument --min-time: must be a positive number of seconds, got 'nan'"),
    (["--total", "8", "--count", "9"], "argument --count: 9 tensors cannot share --total 8 params"),
    (["--quick", "--count", "300000"], "argument --count: 300000 tensors cannot share --total 262144"),
])
def test_bad_numbers_are_clean_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: " + message in err and "Traceback" not in err


def test_bad_option_from_the_command_line_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "optimlab.bench", "--count", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "error: argument --count: must be at least 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_quick_only_changes_defaults():
    full, quick = cli.parse([]), cli.parse(["--quick"])
    assert (full.total, full.count, full.rounds, full.min_time) == tuple(cli.FULL[k] for k in
                                                                        ("total", "count", "rounds", "min_time"))
    assert (quick.total, quick.count, quick.warmup, quick.rounds, quick.min_time) == tuple(
        cli.QUICK[k] for k in ("total", "count", "warmup", "rounds", "min_time"))
    assert "torch-compile" in full.backends and "torch-compile" not in quick.backends
    mixed = cli.parse(["--quick", "--total", "8192", "--iters", "7", "--rounds", "2", "--warmup", "4",
                       "--min-time", "0.5", "--backends", "torch-compile,optimlab-forloop"])
    assert (mixed.total, mixed.iters, mixed.rounds, mixed.warmup, mixed.min_time) == (8192, 7, 2, 4, 0.5)
    assert mixed.count == cli.QUICK["count"] and mixed.backends == ["torch-compile", "optimlab-forloop"]


def test_iters_is_a_floor_on_timed_steps(monkeypatch):
    monkeypatch.setattr(measure, "_cpu_block", lambda timer, number, *args: [1e-3])
    (row,) = measure.measure_cell("SGD", ["torch-forloop"], [(64,)], "custom", torch.float32,
                                  torch.device("cpu"), 10.0, warmup=1, rounds=1, min_time=0.0, iters=50)
    assert row.samples >= 2  # one block of ~2 ms would not hold 50 steps


def test_cpu_samples_short_steps_in_blocks_and_long_steps_alone():
    calls = []

    def step(seconds):
        calls.append(seconds)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            pass

    (mean,) = measure._cpu_block(measure._timer(lambda: step(1e-4)), 20)
    assert len(calls) == 2 + 20 and mean >= 1e-4  # Timer.timeit warms up twice
    calls.clear()
    times = measure._cpu_block(measure._timer(lambda: step(12e-3)), 1, 3, 12e-3)
    # one warm-up step, then one sample per step for about 2.5 steps' time (3 unless one stalls)
    assert 1 <= len(times) <= 3 and len(calls) == 1 + len(times)
    assert all(t >= 12e-3 for t in times)


def test_missing_plot_extra_names_it(tmp_path, monkeypatch, capsys, fixed_copy):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm", None)
    out = tmp_path / "r"
    assert cli.main(["--optimizers", "SGD", "--backends", "torch-forloop", *TINY, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "plot skipped: matplotlib is not installed (pip install 'optimlab[bench]')" in captured.err
    assert "no progress bar: tqdm is not installed" in captured.err
    assert not (out / "results.png").exists() and (out / "results.csv").exists()
    assert "results.png" not in captured.out


def test_gpu_turn_uses_do_bench_and_its_raw_times(monkeypatch):
    testing = pytest.importorskip("triton.testing")
    calls = []

    def do_bench(fn, warmup, rep, return_mode):
        calls.append((warmup, rep, return_mode))
        return [2.0, 4.0]  # ms

    monkeypatch.setattr(testing, "do_bench", do_bench)
    assert measure._gpu_turn(lambda: None, 0.05) == [2e-3, 4e-3]
    assert calls == [(0, pytest.approx(50.0), "all")]


def test_gpu_cells_take_rounds_turns_of_do_bench(monkeypatch):
    """On a GPU every backend gets --rounds turns of min_time / rounds each, in turn."""
    real, cpu = measure._prepare, torch.device("cpu")
    monkeypatch.setattr(measure, "_prepare", lambda *a: real(*a[:5], cpu, a[6]))  # build on the CPU
    calls = []

    def gpu_turn(fn, seconds):
        calls.append((fn, seconds))
        return [1e-3, 2e-3, 3e-3]

    monkeypatch.setattr(measure, "_gpu_turn", gpu_turn)
    rows = measure.measure_cell("SGD", ["optimlab-forloop", "torch-forloop"], [(64,)], "custom", torch.float32,
                                torch.device("cuda"), 10.0, warmup=1, rounds=4, min_time=0.2)
    assert [s for _, s in calls] == [pytest.approx(0.05)] * 8
    first = calls[0][0]
    assert [fn is first for fn, _ in calls] == [True, False, False, True, True, False, False, True]
    assert all(r.samples == 12 and r.median_ms == pytest.approx(2.0) and r.q3_ms == pytest.approx(3.0) for r in rows)


def test_size_classes_are_powers_of_8_buckets():
    assert measure.size_class(16, 16 * 16384) == "t1-n4"
    assert measure.size_class(7, 7 * 4095) == "t0-n3" and measure.size_class(8, 8 * 4096) == "t1-n4"
    assert measure.size_class(4096, 4096 * 256) == "t4-n2"
    assert measure.size_class(1, 0) == "t0-n0"


def _row(optimizer, backend, tensors, params, ms, preset="custom"):
    return cli.Row(optimizer, backend, preset, "float32", "cpu", params, tensors, median_ms=ms)


def test_update_defaults_picks_the_fastest_explicit_backend(tmp_path):
    rows = [
        _row("Adam", "optimlab-forloop", 1, 1, 3.0),
        _row("Adam", "optimlab-foreach", 1, 1, 2.0),
        _row("Adam", "optimlab-default(foreach)", 1, 1, 1.0),
        cli.Row("SGD", "optimlab-cpp", "custom", "float32", "cpu", 1, 1, status="skipped: none"),
        _row("SGD", "optimlab-forloop", 1, 1, 5.0),
        _row("SGD", "torch-fused", 1, 1, 0.1),
    ]
    assert cli.best_backends(rows) == {"adam": {"float32": "foreach"}, "sgd": {"float32": "forloop"}}
    args = cli.parse(["--device", "cpu"])
    path = tmp_path / "defaults.json"
    cli.update_defaults(rows, args, 10.0, path=path)
    table = json.loads(path.read_text())["cpu"]
    assert table["choices"]["adam"] == {"float32": "foreach"} and "device" in table and "command" in table
    assert table["by_size"]["adam"]["float32"]["t0-n0"]["backend"] == "foreach"


def test_one_preset_does_not_decide_for_every_size(tmp_path, monkeypatch):
    """Many small tensors favour foreach, a few big ones cpp: each size class keeps its own
    winner, the flat fallback takes the best over both, and the lookup finds the nearest class."""
    rows = [
        _row("Adam", "optimlab-foreach", 4096, 4096 * 256, 2.0, "many-small"),
        _row("Adam", "optimlab-cpp", 4096, 4096 * 256, 3.0, "many-small"),
        _row("Adam", "optimlab-forloop", 4096, 4096 * 256, 30.0, "many-small"),
        _row("Adam", "optimlab-foreach", 64, 64 << 16, 10.0),
        _row("Adam", "optimlab-cpp", 64, 64 << 16, 4.0),
        _row("Adam", "optimlab-forloop", 64, 64 << 16, 8.0),
        _row("AdamW", "optimlab-foreach", 64, 64 << 16, 11.0),  # same algorithm, same class: votes too
        _row("AdamW", "optimlab-cpp", 64, 64 << 16, 4.5),
    ]
    by_size = cli.best_by_size(rows)["adam"]["float32"]
    assert {k: v["backend"] for k, v in by_size.items()} == {"t4-n2": "foreach", "t2-n5": "cpp"}
    assert len(by_size["t2-n5"]["measured"]) == 2
    assert by_size["t2-n5"]["tensors"] == [64, 512] and by_size["t2-n5"]["mean_numel"] == [32768, 262144]
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"cuda": {"choices": {"adam": {"float32": "triton"}}}}))
    args = cli.parse(["--device", "cpu"])
    cli.update_defaults(rows, args, 10.0, path=path)
    table = json.loads(path.read_text())
    assert table["cuda"] == {"choices": {"adam": {"float32": "triton"}}}  # other devices kept
    entry = table["cpu"]
    assert entry["format"] == 2 and entry["choices"]["adam"]["float32"] == "cpp"  # geomean 1.22x vs 1.58x
    assert defaults.lookup(entry, "adam", "float32", 5000, 5000 * 200) == "foreach"  # exact class
    assert defaults.lookup(entry, "adam", "float32", 100, 100 << 20) == "cpp"  # nearest: t2-n6 -> t2-n5
    assert defaults.lookup(entry, "adam", "float32", 2048, 2048 * 512) == "foreach"  # t3-n3: nearer t4-n2
    assert defaults.lookup(entry, "sgd", "float32", 1, 1) is None
    # a later run at one size replaces that class only
    cli.update_defaults([_row("Adam", "optimlab-forloop", 64, 64 << 16, 1.0),
                         _row("Adam", "optimlab-cpp", 64, 64 << 16, 4.0)], args, 10.0, path=path)
    classes = json.loads(path.read_text())["cpu"]["by_size"]["adam"]["float32"]
    assert {k: v["backend"] for k, v in classes.items()} == {"t4-n2": "foreach", "t2-n5": "forloop"}
    # the dispatcher reads the table by size class
    monkeypatch.setattr(_dispatch, "DEFAULTS_FILE", path)
    _dispatch.measured_defaults.cache_clear()
    try:
        many_small = _dispatch._default("adam", "cpu", torch.float32, None, 4096, 4096 * 256)
        few_large = _dispatch._default("adam", "cpu", torch.float32, None, 64, 64 << 16)
        assert many_small.reason.startswith("measured fastest on")
        assert (many_small.name, few_large.name) == ("foreach", "forloop")
    finally:
        _dispatch.measured_defaults.cache_clear()


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


def test_version_is_single_sourced_from_the_metadata():
    """pyproject.toml holds the version; a source checkout that is not installed says so."""
    import importlib.metadata

    import optimlab

    assert optimlab.__version__ == importlib.metadata.version("optimlab")
    code = ("import importlib.metadata as m; m.distributions = lambda **k: iter(()); "
            "import optimlab; print(optimlab.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "0+unknown", proc.stderr
