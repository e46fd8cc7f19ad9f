"""Host cost per step of the Triton backend, with the kernel launches stubbed out.

    python benchmarks/bench_triton_host.py [--compare /tmp/base] [--sizes 256,512,1024,2048,4096]
        [--optimizers SGD,Adam] [--scenarios steady,miss] [--rounds 5] [--min-run-time 0.4]
        [--markdown benchmarks/results/triton-host-cost-cpu.md]

What is measured: ``opt.step()`` of an optimlab optimizer on N one-element float32
params (``OPTIMLAB_BACKEND=triton``), i.e. everything the host does per step on the
triton path: the base class's plan (the triton backend's input check included), the
update function (scalars, step counters, state), the launcher (buckets, launch tables,
scalar table, compile cache), and the call into the kernel object.

How host cost is isolated: every ``@triton.jit`` kernel of the backend's family modules
(``optimlab.kernels.triton.*_family``, attributes named ``*_kernel``) is replaced by a
stub whose ``kernel[grid](*args, **kwargs)`` returns at once and whose ``warmup`` does
nothing, so no kernel runs (neither compiled nor interpreted). The tensors are CPU
tensors, accepted because the workers run with ``TRITON_INTERPRET=1`` (which is why no
table is pinned or copied to a GPU: on a GPU a table miss adds one pinned host-to-device
copy, and each launch Triton's own launcher cost, neither of which depends on N). The
stubs count their launches; a run that launched nothing is an error.

Scenarios: ``steady`` steps with the same grads every step (the launch table is cached);
``miss`` gives every param a new grad tensor before each step, cycling through more grad
sets than the table cache holds (so every step rebuilds the launch table); the time to
re-point the grads alone is measured too and subtracted.

``--compare DIR`` also measures the code in DIR (e.g. ``git worktree add /tmp/base HEAD``
before a change), in the same run, interleaved: one persistent worker process per code
tree (``PYTHONPATH=DIR``), and each round measures every cell in both, alternating which
goes first. Timing is ``torch.utils.benchmark.Timer.blocked_autorange``: each block
times one or more steps and gives one per-step time; the blocks of all rounds are
pooled, and their median and interquartile range reported ("blocks": how many). To
measure exactly one change, make both trees from the same commit, e.g.
``git worktree add /tmp/before HEAD``, ``git worktree add /tmp/after HEAD``, copy the
changed files into /tmp/after, and run /tmp/after's copy of this script with
``--compare /tmp/before``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("adam_family", "sgd_family", "adagrad_family", "matrix_family")
KWARGS = {  # every algorithm with an elementwise triton kernel
    "SGD": {"lr": 0.1, "momentum": 0.9},
    "Adam": {"lr": 1e-3},
    "AdamW": {"lr": 1e-3},
    "Adamax": {"lr": 2e-3},
    "NAdam": {"lr": 1e-3},
    "RAdam": {"lr": 1e-3},
    "RMSprop": {"lr": 1e-2},
    "Adagrad": {"lr": 1e-2},
    "Adadelta": {"lr": 1.0},
    "ASGD": {"lr": 1e-2},
    "Rprop": {"lr": 1e-2},
}
MISS_POOL = 80  # grad sets cycled through in the "miss" scenario (> the table cache's 64)


# ---- worker: one process per code tree -------------------------------------------------------
class _NoLaunch:
    """Stands for a @triton.jit kernel: a launch returns at once (counted)."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        return self._run

    def _run(self, *args, **kwargs):
        self.launches += 1

    def warmup(self, *args, **kwargs):
        pass


def _worker() -> int:
    import importlib

    import torch
    import torch.utils.benchmark as benchmark

    import optimlab

    torch.set_num_threads(1)
    stubs = []
    for fam in FAMILIES:
        mod = importlib.import_module(f"optimlab.kernels.triton.{fam}")
        for name, v in list(vars(mod).items()):
            if name.endswith("_kernel") and hasattr(v, "warmup"):
                stub = _NoLaunch()
                setattr(mod, name, stub)
                stubs.append(stub)
    made: dict = {}

    def setup(name: str, n: int, scenario: str):
        key = (name, n, scenario)
        if key in made:
            return made[key]
        params = [torch.zeros(1, requires_grad=True) for _ in range(n)]
        pools = [[torch.full((1,), 1e-3) for _ in range(n)] for _ in range(MISS_POOL if scenario == "miss" else 1)]
        for p, g in zip(params, pools[0]):
            p.grad = g
        opt = getattr(optimlab, name)(params, **KWARGS[name])
        state = {"i": 0}

        def swap():
            state["i"] = (state["i"] + 1) % len(pools)
            for p, g in zip(params, pools[state["i"]]):
                p.grad = g

        for _ in range(3):  # state creation, first-use costs
            opt.step()
            if scenario == "miss":
                swap()
        backends = {c.name for c in opt.backends()}
        if backends != {"triton"}:
            raise RuntimeError(f"{name} runs on {backends}, not triton")
        made[key] = (opt, swap)
        return made[key]

    print(json.dumps({"ready": True, "optimlab": os.path.dirname(optimlab.__file__)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        opt, swap = setup(req["optimizer"], req["n"], req["scenario"])
        before = sum(s.launches for s in stubs)
        stmt = "swap(); opt.step()" if req["scenario"] == "miss" else "opt.step()"
        m = benchmark.Timer(stmt=stmt, globals={"opt": opt, "swap": swap}).blocked_autorange(
            min_run_time=req["min_run_time"])
        out = {"times": list(m.times), "launches": sum(s.launches for s in stubs) - before}
        if req["scenario"] == "miss":
            out["swap"] = list(benchmark.Timer(stmt="swap()", globals={"swap": swap}).blocked_autorange(
                min_run_time=req["min_run_time"] / 4).times)
        print(json.dumps(out), flush=True)
    return 0


# ---- driver ---------------------------------------------------------------------------------
class _Worker:
    def __init__(self, label: str, tree: str):
        env = dict(os.environ, PYTHONPATH=tree, TRITON_INTERPRET="1", OPTIMLAB_BACKEND="triton",
                   OMP_NUM_THREADS="1")
        self.label, self.tree = label, tree
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"], env=env,
                                     cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        hello = json.loads(self.proc.stdout.readline())
        self.optimlab = hello["optimlab"]
        if os.path.realpath(self.optimlab) != os.path.realpath(os.path.join(tree, "optimlab")):
            raise RuntimeError(f"{label}: imported optimlab from {self.optimlab}, not {tree}")

    def measure(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        out = json.loads(self.proc.stdout.readline())
        if out["launches"] == 0:
            raise RuntimeError(f"{self.label}: {req} launched no (stubbed) kernel")
        return out

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def _stats(times: list[float]) -> tuple[float, float]:
    """Median and interquartile range (torch.utils.benchmark's definitions)."""
    import torch.utils.benchmark as benchmark
    from torch.utils.benchmark.utils.common import TaskSpec

    m = benchmark.Measurement(number_per_run=1, raw_times=times, task_spec=TaskSpec(stmt="", setup=""))
    return m.median, m.iqr


def _fmt_ms(t: float) -> str:
    return f"{t * 1e3:.3f}"


def _slope(ns, ts) -> float:
    """Least-squares exponent k of t ~ N^k (1: linear, 2: quadratic)."""
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _git_rev(tree: str) -> str:
    try:
        rev = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--", "optimlab"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" + uncommitted changes under optimlab/" if dirty else "")
    except Exception:  # noqa: BLE001
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", metavar="DIR", help="also measure the code in DIR (the 'before')")
    ap.add_argument("--sizes", default="256,512,1024,2048,4096")
    ap.add_argument("--optimizers", default="SGD,Adam")
    ap.add_argument("--scenarios", default="steady")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-run-time", type=float, default=0.4, help="seconds per cell and round")
    ap.add_argument("--markdown", metavar="FILE", help="write the tables (and the run's details) here")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker()

    sizes = [int(s) for s in args.sizes.split(",")]
    optimizers = args.optimizers.split(",")
    scenarios = args.scenarios.split(",")
    workers = [_Worker("after", REPO)]
    if args.compare:
        workers.insert(0, _Worker("before", os.path.abspath(args.compare)))
    cells = [(o, s, n) for s in scenarios for o in optimizers for n in sizes]
    pooled = {(w.label, c): {"times": [], "swap": []} for w in workers for c in cells}
    t0 = time.time()
    for r in range(args.rounds):
        for cell in cells:
            order = workers if r % 2 == 0 else workers[::-1]
            for w in order:
                out = w.measure(optimizer=cell[0], scenario=cell[1], n=cell[2], min_run_time=args.min_run_time)
                pooled[(w.label, cell)]["times"] += out["times"]
                pooled[(w.label, cell)]["swap"] += out.get("swap", [])
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    for w in workers:
        w.close()

    lines = []
    labels = [w.label for w in workers]
    for scenario in scenarios:
        for o in optimizers:
            head = f"### {o} ({', '.join(f'{k}={v}' for k, v in KWARGS[o].items())}), scenario `{scenario}`"
            if scenario == "miss":
                head += " (grad re-pointing time subtracted)"
            lines += ["", head, ""]
            cols = ["N"]
            for lab in labels:
                cols += [f"{lab}: median ms (IQR)", f"{lab}: µs per tensor", f"{lab}: blocks"]
            if len(labels) == 2:
                cols.append("before / after")
            lines.append("| " + " | ".join(cols) + " |")
            lines.append("|" + "---|" * len(cols))
            medians = {lab: [] for lab in labels}
            for n in sizes:
                row = [str(n)]
                for lab in labels:
                    d = pooled[(lab, (o, scenario, n))]
                    med, iqr = _stats(d["times"])
                    if d["swap"]:
                        med -= _stats(d["swap"])[0]
                    medians[lab].append(med)
                    row += [f"{_fmt_ms(med)} ({_fmt_ms(iqr)})", f"{med / n * 1e6:.2f}", str(len(d["times"]))]
                if len(labels) == 2:
                    row.append(f"{medians['before'][-1] / medians['after'][-1]:.1f}x")
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
            for lab in labels:
                k = _slope(sizes, medians[lab])
                per = [m / n for m, n in zip(medians[lab], sizes)]
                lines.append(f"* {lab}: time ~ N^{k:.2f} (least squares on log-log); per-tensor cost at "
                             f"N={sizes[-1]} / at N={sizes[0]}: {per[-1] / per[0]:.2f}")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        import torch

        try:
            import triton

            triton_version = triton.__version__
        except Exception:  # noqa: BLE001
            triton_version = "not installed"
        cmd = "python " + " ".join([os.path.relpath(os.path.abspath(__file__), REPO)] + (argv or sys.argv[1:]))
        try:
            cpu = subprocess.run("lscpu | head", shell=True, capture_output=True, text=True).stdout.rstrip()
        except Exception:  # noqa: BLE001
            cpu = platform.processor()
        trees = "\n".join(f"* {w.label}: `{w.tree}` ({_git_rev(w.tree)})" for w in workers)
        with open(args.markdown, "w") as f:
            f.write(
                "# Triton backend: host cost per step (CPU, kernel launches stubbed)\n\n"
                f"Command (from the repository root):\n\n```\n{cmd}\n```\n\n"
                f"Code trees:\n\n{trees}\n\n"
                f"Python {platform.python_version()}, torch {torch.__version__}, triton {triton_version}, "
                "one intra-op thread; CPU tensors with TRITON_INTERPRET=1, every kernel launch a no-op "
                "stub (see the script's docstring for what is and is not measured).\n\n"
                f"Machine (`lscpu | head`):\n\n```\n{cpu}\n```\n"
                f"{text}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
