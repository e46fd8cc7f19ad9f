"""Median step time of optimlab's default backend where the host side matters: many small
tensors, and a few large ones for contrast.

    python benchmarks/bench_step_overhead.py [--steps 40]

To compare two commits, run it with each checkout first on the path, alternating:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python benchmarks/bench_step_overhead.py --label old
    PYTHONPATH=.        python benchmarks/bench_step_overhead.py --label new
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import optimlab

# (optimizer, tensors, elements per tensor, constructor kwargs)
CASES = (
    ("SGD", 4096, 256, {"momentum": 0.9}),
    ("Adam", 4096, 256, {}),
    ("Adamax", 64, 1, {}),
    ("Adamax", 64, 65536, {}),
    ("SGD", 64, 65536, {"momentum": 0.9}),
)


def median_step_ms(name: str, k: int, n: int, kwargs: dict, steps: int) -> float:
    params = [torch.randn(n, requires_grad=True) for _ in range(k)]
    for p in params:
        p.grad = torch.randn(n) * 1e-2
    opt = getattr(optimlab, name)(params, lr=0.01, **kwargs)
    for _ in range(3):  # state creation, first-use costs
        opt.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="", help="printed first, to tell runs apart")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = [f"{name} {k}x{n}: {median_step_ms(name, k, n, kw, args.steps):.3f} ms"
             for name, k, n, kw in CASES]
    print(args.label, " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
