"""CPU step time of optimlab's backends vs torch.optim's, for the eleven elementwise optimizers.

    python benchmarks/bench_cpu_fused.py [--params 4194304] [--tensors 64] [--steps 20]
                                         [--rounds 3] [--out benchmarks/results/cpu-<machine>.md]

fp32 params (``--params`` elements in ``--tensors`` equal tensors), random grads set
once. For each optimizer: median step time of optimlab's default CPU backend (cpp),
optimlab's foreach and forloop backends, torch's for-loop, foreach and (Adam, AdamW,
SGD, Adagrad) fused. GB/s counts the bytes a step must move per param (param
read+write, grad read, each state tensor read+write; see BYTES) and is compared with
the bandwidth of a large ``copy_`` measured in the same run. The variants of one
optimizer take turns step by step, so a burst of load on the machine hits them
alike; ``--cache warm`` (default) times steps that follow a step of the same
variant, ``--cache cold`` steps that follow the other variants' steps (their data,
not this optimizer's, in the caches). Medians are over all steps of all rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optimlab  # noqa: E402
import optimlab.kernels.cpu  # noqa: E402,F401  (registers the cpp backend)

# name -> (constructor kwargs, bytes per fp32 param a step must read + write)
#   param r+w 8, grad r 4, each state tensor r+w 8
CONFIGS = {
    "Adam": ({}, 28),
    "AdamW": ({}, 28),
    "SGD": ({"momentum": 0.9}, 20),
    "Adagrad": ({}, 20),
    "Adadelta": ({}, 28),
    "Adamax": ({}, 28),
    "ASGD": ({}, 16),  # default t0 = 1e6: mu == 1, ax = p is written, never read
    "NAdam": ({}, 28),
    "RAdam": ({}, 28),
    "RMSprop": ({}, 20),
    "Rprop": ({}, 28),
}
TORCH_FUSED = ("Adam", "AdamW", "SGD", "Adagrad")
CACHE_MODES = {
    "warm": "each timed step follows an untimed step of the same variant, as back-to-back steps do",
    "cold": "each timed step follows the other variants' steps, as a training step follows "
            "forward and backward",
}
DEFAULT_BACKEND: dict[str, str] = {}  # what "optimlab default" resolved to
VARIANTS = ("optimlab default", "optimlab foreach", "optimlab forloop", "torch forloop", "torch foreach",
            "torch fused")


def make_params(n_params: int, n_tensors: int):
    gen = torch.Generator().manual_seed(0)
    per = n_params // n_tensors
    params = [torch.randn(per, generator=gen).requires_grad_() for _ in range(n_tensors)]
    for p in params:
        p.grad = torch.randn(per, generator=gen) * 1e-2
    return params


def build(name: str, variant: str, params):
    kwargs, _ = CONFIGS[name]
    lib, _, impl = variant.partition(" ")
    if lib == "optimlab":
        flags = {"default": {}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[impl]
        opt = getattr(optimlab, name)(params, **kwargs, **flags)
        got = {c.name for c in opt.backends()}
        if impl == "default":
            DEFAULT_BACKEND[name] = "/".join(sorted(got))
        else:
            assert got == {impl}, f"{name} {variant}: runs {got}"
        return opt
    if impl == "fused" and name not in TORCH_FUSED:
        return None
    flags = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[impl]
    return getattr(torch.optim, name)(params, **kwargs, **flags)


def time_steps(opt, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        out.append(time.perf_counter() - t0)
    return out


def copy_bandwidth(n_bytes: int, repeats: int = 15) -> float:
    """GB/s of dst.copy_(src) (bytes read + written), tensors larger than the caches."""
    src = torch.randn(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        return m.group(1).strip() if m else platform.processor()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm",
                        help="warm: timed steps follow a step of the same optimizer (back-to-back "
                        "steps); cold: they follow the other variants' steps")
    parser.add_argument("--only", nargs="*", help="optimizer names (default: all eleven)")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    parser.add_argument("--machine", default=None, help="short machine name for the report")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args(argv)

    names = args.only or list(CONFIGS)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_build = time.perf_counter()
    ext = optimlab.kernels.cpu.load()
    build_s = time.perf_counter() - t_build
    copy_gbs = []
    samples: dict[tuple[str, str], list[float]] = {}
    for name in names:
        # Every variant of one optimizer lives at once and they take turns in a rotating order,
        # so all of them see the same moments of a shared machine (whose memory bandwidth
        # varies with its neighbours' load). --cache warm: each timed step follows an untimed
        # step of the same variant, so the caches hold what back-to-back steps leave there;
        # --cache cold: each timed step follows the other variants' steps, as a training step
        # follows forward and backward.
        opts = {}
        for variant in VARIANTS:
            opt = build(name, variant, make_params(args.params, args.tensors))
            if opt is not None:
                opts[variant] = opt
                time_steps(opt, args.warmup)
        order = list(opts)
        for r in range(args.rounds):
            copy_gbs.append(copy_bandwidth(64 * 1024 * 1024))
            for s in range(args.steps):
                k = (r * args.steps + s) % len(order)
                for variant in order[k:] + order[:k]:
                    if args.cache == "warm":
                        opts[variant].step()
                    samples.setdefault((name, variant), []).extend(time_steps(opts[variant], 1))
        del opts
        print(f"{name} done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    bw = statistics.median(copy_gbs)

    lines = [
        f"| optimizer | B/param | default backend | " + " | ".join(f"{v} ms" for v in VARIANTS)
        + " | default GB/s | % of copy | torch best / default |",
        "|---|---:|---|" + "---:|" * len(VARIANTS) + "---:|---:|---:|",
    ]
    for name in names:
        _, bpp = CONFIGS[name]
        med = {v: statistics.median(samples[(name, v)]) * 1e3 for v in VARIANTS if (name, v) in samples}
        torch_best = min(t for v, t in med.items() if v.startswith("torch"))
        ours = med["optimlab default"]
        gbs = bpp * args.params / (ours / 1e3) / 1e9
        cells = [f"{med[v]:.2f}" if v in med else "—" for v in VARIANTS]
        lines.append(
            f"| {name} | {bpp} | {DEFAULT_BACKEND.get(name, '?')} | " + " | ".join(cells)
            + f" | {gbs:.1f} | {100 * gbs / bw:.0f}% | {torch_best / ours:.2f}x |"
        )
    table = "\n".join(lines)
    # The fastest step of each variant: what the code does when the OS does not preempt it
    # (on a shared machine a preempted OpenMP thread costs whole scheduler ticks).
    mins = [
        "| optimizer | " + " | ".join(f"{v} min ms" for v in VARIANTS) + " | torch best / default (min) |",
        "|---|" + "---:|" * len(VARIANTS) + "---:|",
    ]
    for name in names:
        best = {v: min(samples[(name, v)]) * 1e3 for v in VARIANTS if (name, v) in samples}
        torch_best = min(t for v, t in best.items() if v.startswith("torch"))
        cells = [f"{best[v]:.2f}" if v in best else "—" for v in VARIANTS]
        mins.append(f"| {name} | " + " | ".join(cells) + f" | {torch_best / best['optimlab default']:.2f}x |")
    table += "\n\n" + "\n".join(mins)
    header = [
        f"- command: `python {' '.join([Path(sys.argv[0]).as_posix()] + (argv or sys.argv[1:]))}`",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, cpp build: {ext.capability} "
        f"({ext.vector_width_float} floats/vector)",
        f"- {args.params} fp32 params in {args.tensors} tensors; {args.rounds} rounds x {args.steps} "
        f"timed steps per variant (after {args.warmup} warm-up steps); variants take turns; "
        f"cache {args.cache} ({CACHE_MODES[args.cache]}); medians",
        f"- measured copy_ bandwidth (64 MiB -> 64 MiB, read + write): {bw:.1f} GB/s "
        f"(per round: {', '.join(f'{x:.1f}' for x in copy_gbs)})",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}",
        f"- extension load time in this process: {build_s:.2f} s",
    ]
    report = "\n".join(header) + "\n\n" + table + "\n"
    print(report)
    if args.out:
        write_report(args.out, f"CPU fused optimizer step times ({args.machine or cpu_model()})",
                     f"{torch.get_num_threads()} thread(s)", report, args.append)
    return 0


def write_report(out: Path, title: str, section: str, report: str, append: bool) -> None:
    """Write ``report`` under ``## section`` to ``out`` (a new file titled ``title``, or appended)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    body = f"## {section}\n\n{report}"
    if append and out.exists():
        out.write_text(out.read_text() + "\n" + body)
    else:
        out.write_text(f"# {title}\n\n{body}")


if __name__ == "__main__":
    raise SystemExit(main())
