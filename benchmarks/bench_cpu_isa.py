"""Which instruction set should the cpp kernels be built for? AVX-512 vs AVX2 builds, paired.

    python benchmarks/bench_cpu_isa.py [--steps 60] [--threads 1 2] [--cache warm|cold] [--out benchmarks/results/cpu-<machine>-isa.md]

Builds (or loads from the cache) the cpp extension for every instruction set this CPU
runs and times optimlab's default step of the eleven optimizers with each build, the
builds taking turns step by step on their own copies of the same problem (4M fp32 params
in 64 tensors, as bench_cpu_fused.py): medians per build and the median of the paired
ratios, at each thread count. The winner is what ``optimlab.kernels.cpu.capability``
should pick on this kind of machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu_fused as fused  # noqa: E402  (CONFIGS, make_params, cpu_model)

import optimlab  # noqa: E402
import optimlab.kernels.cpp_build as cpp_build  # noqa: E402


def builds() -> dict[str, object]:
    """The extension built for each instruction set this CPU runs, best first."""
    order = cpp_build._FALLBACK_ORDER
    top = order.index(cpp_build._machine_level())
    return {isa: cpp_build._build(isa, cpp_build.csrc_dir()) for isa in order[top:] if isa != "DEFAULT"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per build")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm",
                        help="warm: each timed step follows an untimed step of the same build; "
                        "cold: it follows the other build's step")
    parser.add_argument("--only", nargs="*", help="optimizer names (default: all eleven)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args(argv)

    exts = builds()
    if len(exts) < 2:
        print(f"only {list(exts)} runs here: nothing to compare", file=sys.stderr)
        return 0
    isas = list(exts)
    names = args.only or list(fused.CONFIGS)
    lines = [
        "| optimizer | threads | " + " | ".join(f"{i} ms" for i in isas)
        + f" | {isas[0]} / {isas[1]} (paired median) |",
        "|---|---:|" + "---:|" * len(isas) + "---:|",
    ]
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name in names:
                kwargs, _ = fused.CONFIGS[name]
                opts = {i: getattr(optimlab, name)(fused.make_params(args.params, args.tensors), **kwargs)
                        for i in isas}
                times: dict[str, list[float]] = {i: [] for i in isas}
                ratios = []
                for s in range(args.steps + 2):
                    step = {}
                    for isa in (isas if s % 2 else isas[::-1]):  # alternate who goes first
                        cpp_build._module = exts[isa]
                        if args.cache == "warm":
                            opts[isa].step()
                        t0 = time.perf_counter()
                        opts[isa].step()
                        step[isa] = time.perf_counter() - t0
                    if s >= 2:  # the first two steps create state
                        for isa in isas:
                            times[isa].append(step[isa])
                        ratios.append(step[isas[0]] / step[isas[1]])
                cells = " | ".join(f"{statistics.median(times[i]) * 1e3:.2f}" for i in isas)
                lines.append(f"| {name} | {threads} | {cells} | {statistics.median(ratios):.3f} |")
                print(lines[-1], file=sys.stderr, flush=True)
    finally:
        cpp_build._module = None  # the next load() picks the default build again
    header = [
        f"- command: `python {' '.join([Path(sys.argv[0]).as_posix()] + (argv or sys.argv[1:]))}`",
        f"- CPU: {fused.cpu_model()}, torch {torch.__version__}; {args.params} fp32 params in "
        f"{args.tensors} tensors; {args.steps} steps per build, builds alternating step by step; "
        f"cache {args.cache} ({fused.CACHE_MODES[args.cache].replace('variant', 'build')})",
        f"- ratio > 1: the {isas[1]} build is faster",
    ]
    report = "\n".join(header) + "\n\n" + "\n".join(lines) + "\n"
    print(report)
    if args.out:
        fused.write_report(args.out, "cpp kernels: instruction set", f"cache {args.cache}", report, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
