"""Median step time of optimlab's default backend where the host side matters: many small
tensors, and a few large ones for contrast.

    python benchmarks/bench_step_overhead.py [--steps 40] [--all]

To compare two commits, run it with each checkout first on the path, alternating:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python benchmarks/bench_step_overhead.py --label old
    PYTHONPATH=.        python benchmarks/bench_step_overhead.py --label new

or, paired in one process (the two take turns step by step, so both see the same moments
of a shared machine), with ``--baseline``: the checkout's ``optimlab`` package is imported
a second time, under another name, next to the one on the path:

    python benchmarks/bench_step_overhead.py --baseline /tmp/old --steps 200

``--dispatcher`` times, the same way, the cpp backend's eager step calling its operators
through torch's dispatcher (as under make_fx or a dispatch mode) against the direct call
of their CPU implementations that eager steps make (optimlab/kernels/ops.py).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
# --all: every fused elementwise optimizer and Adafactor, many small and a few large tensors
ALL = tuple((name, k, n, {"momentum": 0.9} if name == "SGD" else {})
            for name in ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam",
                         "RAdam", "RMSprop", "Rprop", "Adafactor")
            for k, n in ((4096, 256), (64, 65536)))


def _optimizer(package, name: str, k: int, n: int, kwargs: dict, params=None):
    if params is None:
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(n, generator=gen, requires_grad=True) for _ in range(k)]
        for p in params:
            p.grad = torch.randn(n, generator=gen) * 1e-2
    opt = getattr(package, name)(params, lr=0.01, **kwargs)
    for _ in range(3):  # state creation, first-use costs
        opt.step()
    return opt


def _timed(opt) -> float:
    t0 = time.perf_counter()
    opt.step()
    return time.perf_counter() - t0


def median_step_ms(name: str, k: int, n: int, kwargs: dict, steps: int) -> float:
    opt = _optimizer(optimlab, name, k, n, kwargs)
    return statistics.median(_timed(opt) for _ in range(steps)) * 1e3


def paired_ms(baseline, name: str, k: int, n: int, kwargs: dict, steps: int) -> tuple[float, float, float]:
    """(baseline median ms, current median ms, median of the per-pair ratios current/baseline).
    The two optimizers step the same params with the same state tensors (the state dict is
    shared), in turn, the order alternating: they do the same work on the same memory and
    differ only in their code. (Optimizers on separate tensors differed by up to 15% here
    with the same code on both sides: the luck of where their tensors were allocated.)"""
    old = _optimizer(baseline, name, k, n, kwargs)
    params = old.param_groups[0]["params"]
    new = _optimizer(optimlab, name, k, n, kwargs, params)
    new.state = old.state
    t_old, t_new = [], []
    for i in range(steps):
        if i % 2:
            t_old.append(_timed(old))
            t_new.append(_timed(new))
        else:
            t_new.append(_timed(new))
            t_old.append(_timed(old))
    ratios = [b / a for a, b in zip(t_old, t_new)]
    return statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3, statistics.median(ratios)


def dispatcher_ms(name: str, k: int, n: int, kwargs: dict, steps: int) -> tuple[float, float, float]:
    """(direct median ms, through-the-dispatcher median ms, median ratio), paired as above."""
    from optimlab.kernels import ops

    direct = _optimizer(optimlab, name, k, n, kwargs)
    dispatched = _optimizer(optimlab, name, k, n, kwargs, direct.param_groups[0]["params"])
    dispatched.state = direct.state
    real = ops.tracing
    t_direct, t_dispatched = [], []
    try:
        for i in range(steps):
            for through in ((True, False) if i % 2 else (False, True)):
                ops.tracing = (lambda: True) if through else real  # what ops.call asks
                (t_dispatched if through else t_direct).append(_timed(dispatched if through else direct))
    finally:
        ops.tracing = real
    ratios = [b / a for a, b in zip(t_direct, t_dispatched)]
    return statistics.median(t_direct) * 1e3, statistics.median(t_dispatched) * 1e3, statistics.median(ratios)


def import_baseline(checkout: str):
    """The ``optimlab`` package of ``checkout`` (with its csrc/), imported as ``optimlab_baseline``
    (the package imports itself relatively, so a renamed copy is self-contained)."""
    root = Path(tempfile.mkdtemp(prefix="optimlab-baseline-"))
    shutil.copytree(Path(checkout) / "optimlab", root / "optimlab_baseline")
    shutil.copytree(Path(checkout) / "csrc", root / "csrc")  # where its loader looks
    # torch operators (cpp's, and Triton's where they exist): their own namespace
    for ops in (root / "optimlab_baseline" / "kernels" / "ops.py",
                root / "optimlab_baseline" / "kernels" / "triton" / "_ops.py"):
        if ops.is_file():
            ops.write_text(ops.read_text().replace('NAMESPACE = "optimlab"', 'NAMESPACE = "optimlab_baseline"'))
    # its C++ extension under its own module name (one name would load one build for both)
    for loader in ("cpp_build.py", "cpu.py"):
        f = root / "optimlab_baseline" / "kernels" / loader
        if f.is_file():
            f.write_text(f.read_text().replace('f"optimlab_cpu_{', 'f"optimlab_baseline_cpu_{'))
    sys.path.insert(0, str(root))
    return importlib.import_module("optimlab_baseline")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="", help="printed first, to tell runs apart")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="time a second checkout's optimlab, paired")
    parser.add_argument("--dispatcher", action="store_true",
                        help="time cpp steps through torch's dispatcher against direct calls, paired")
    parser.add_argument("--all", action="store_true",
                        help="every fused optimizer at 4096 x 256 and 64 x 65536 (default: a few cases)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = ALL if args.all else CASES
    if args.dispatcher:
        print(f"{args.label} direct -> through the dispatcher, {args.threads} threads, {args.steps} paired "
              "steps; ms (median ratio)")
        for name, k, n, kw in cases:
            direct, dispatched, ratio = dispatcher_ms(name, k, n, kw, args.steps)
            print(f"  {name} {k}x{n}: {direct:.3f} -> {dispatched:.3f} ({ratio:.3f})", flush=True)
        return 0
    if args.baseline:
        baseline = import_baseline(args.baseline)
        print(f"{args.label} baseline {args.baseline} vs {Path(optimlab.__file__).parents[1]}, "
              f"{args.threads} threads, {args.steps} paired steps; ms: baseline -> current (median ratio)")
        for name, k, n, kw in cases:
            old, new, ratio = paired_ms(baseline, name, k, n, kw, args.steps)
            print(f"  {name} {k}x{n}: {old:.3f} -> {new:.3f} ({ratio:.3f})", flush=True)
        return 0
    cells = [f"{name} {k}x{n}: {median_step_ms(name, k, n, kw, args.steps):.3f} ms"
             for name, k, n, kw in cases]
    print(args.label, " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
