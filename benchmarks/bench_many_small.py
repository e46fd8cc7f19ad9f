"""optimlab's default step against torch.optim's fastest option with many small tensors,
and the host cost per tensor.

    python benchmarks/bench_many_small.py [--tensors 4096] [--size 256] [--rounds 5]
        [--steps 10] [--threads 2] [--only Adam SGD ...] [--warm] [--out FILE.md]

For each optimizer (fp32 params: ``--tensors`` tensors of ``--size`` elements, grads set
once; Muon gets square matrices, SparseAdam sparse grads): the step time of optimlab's
default backend, of torch.optim's for-loop, foreach and fused options (those the class
has), and of optimlab's default on the same number of elements in one tensor. The
variants take turns step by step, so a burst of load on a shared machine hits them alike;
each round's median is kept and the table shows the median over rounds with the spread
(min-max of the round medians).

Host cost per tensor = (default step on the many tensors - default step on one tensor of
the same total size) / tensors: what a step costs per tensor beyond moving its bytes.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optimlab  # noqa: E402

NAMES = ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam",
         "RMSprop", "Rprop", "Adafactor", "Muon", "SparseAdam")
KWARGS = {"SGD": {"momentum": 0.9}}
LR = {"SGD": 1e-3, "Muon": 1e-3}
# no one-tensor run: Muon's update on one large matrix is another computation (its cost grows
# with the matrix's side), SparseAdam's cost is in its sparse grads' indices
NO_HOST = ("Muon", "SparseAdam")


def _params(name: str, k: int, n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    side = math.isqrt(n)
    shape = (side, n // side) if name == "Muon" else (n,)  # Muon takes matrices only
    params = [torch.randn(shape, generator=gen, requires_grad=True) for _ in range(k)]
    for p in params:
        g = torch.randn(shape, generator=gen) * 1e-2
        p.grad = g.to_sparse() if name == "SparseAdam" else g
    return params


def variants(name: str, k: int, n: int) -> dict[str, torch.optim.Optimizer]:
    """label -> optimizer, each on its own params."""
    kw = dict(KWARGS.get(name, {}), lr=LR.get(name, 1e-3))
    out = {"optimlab default": getattr(optimlab, name)(_params(name, k, n), **kw)}
    cls = getattr(torch.optim, name)
    options = inspect.signature(cls).parameters
    if "foreach" in options:
        out["torch for-loop"] = cls(_params(name, k, n), foreach=False, **kw)
        out["torch foreach"] = cls(_params(name, k, n), foreach=True, **kw)
    else:
        out["torch default"] = cls(_params(name, k, n), **kw)
    if "fused" in options:
        try:
            out["torch fused"] = cls(_params(name, k, n), fused=True, **kw)
        except RuntimeError:  # no fused CPU kernel for this algorithm
            pass
    if name not in NO_HOST:
        out["optimlab, 1 tensor"] = getattr(optimlab, name)(_params(name, 1, k * n), **kw)
    return out


def measure(name: str, k: int, n: int, rounds: int, steps: int, warm: bool = False) -> dict[str, list[float]]:
    """label -> the per-round median step times (s). Steps take turns between the variants
    (each starts with the others' data in the caches, as a training step after forward and
    backward), or with ``warm`` each variant's steps of a round run back to back."""
    opts = variants(name, k, n)
    for opt in opts.values():
        for _ in range(3):  # state creation, first-use costs
            opt.step()
    per_round: dict[str, list[float]] = {label: [] for label in opts}
    for r in range(rounds):
        times: dict[str, list[float]] = {label: [] for label in opts}
        order = list(opts.items())
        turns = ([[(label, opt)] * steps for label, opt in order] if warm else
                 [order if (r + s) % 2 == 0 else order[::-1] for s in range(steps)])
        for turn in turns:
            for label, opt in turn:
                t0 = time.perf_counter()
                opt.step()
                times[label].append(time.perf_counter() - t0)
        for label, ts in times.items():
            per_round[label].append(statistics.median(ts))
    return per_round


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.2f} ({min(values) * 1e3:.2f}-{max(values) * 1e3:.2f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=4096)
    parser.add_argument("--size", type=int, default=256, help="elements per tensor")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", nargs="*", help="optimizer names (default: all fourteen)")
    parser.add_argument("--warm", action="store_true",
                        help="each variant's steps back to back (default: variants take turns step by step)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    for flag in ("tensors", "size", "rounds", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    k, n = args.tensors, args.size
    lines = [
        f"# Many small tensors: {k} x {n} fp32, {torch.get_num_threads()} threads",
        "",
        f"`python benchmarks/bench_many_small.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"on {platform.node() or 'this machine'} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs), torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        "",
        f"Median step ms over {args.rounds} rounds of {args.steps} interleaved steps (min-max of the "
        "round medians). Host µs/tensor = (default - default on 1 tensor) / tensors.",
        "",
        "| optimizer | optimlab default | torch fastest | fastest / default | host µs/tensor |",
        "|---|---:|---|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for name in args.only or NAMES:
        per_round = measure(name, k, n, args.rounds, args.steps, args.warm)
        default = per_round.pop("optimlab default")
        single = per_round.pop("optimlab, 1 tensor", None)
        best = min(per_round, key=lambda label: statistics.median(per_round[label]))
        ratio = statistics.median(per_round[best]) / statistics.median(default)
        host = "-"
        if single is not None:
            us = [(a - b) / k * 1e6 for a, b in zip(default, single)]
            host = f"{statistics.median(us):.2f} ({min(us):.2f}-{max(us):.2f})"
        row = (f"| {name} | {_fmt(default)} | {_fmt(per_round[best])} {best.removeprefix('torch ')} | "
               f"{ratio:.2f}x | {host} |")
        lines.append(row)
        print(row, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
