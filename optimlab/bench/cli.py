"""``python -m optimlab.bench``: optimizer-step throughput per optimizer, backend, size and dtype."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import shlex
import sys
from pathlib import Path

import torch

import optimlab

from .measure import BACKENDS, OPTIMIZERS, Row, copy_bandwidth, measure
from .presets import PRESETS, custom, numel

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULTS_FILE = Path(optimlab.__file__).parent / "_defaults.json"
QUICK = dict(total=1 << 18, count=16, warmup=1, iters=3)


def _choices(text: str, valid, what: str, parser) -> list[str]:
    names = list(valid) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad:
        parser.error(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)} (or 'all')")
    return names


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m optimlab.bench", description=__doc__)
    ap.add_argument("--optimizers", default="all", help=f"comma list or 'all' of: {', '.join(OPTIMIZERS)}")
    ap.add_argument("--backends", default="all", help=f"comma list or 'all' of: {', '.join(BACKENDS)}")
    ap.add_argument("--presets", default="custom", help=f"comma list of: custom, {', '.join(PRESETS)}")
    ap.add_argument("--total", type=int, default=4 << 20, help="custom preset: total params")
    ap.add_argument("--count", type=int, default=64, help="custom preset: number of tensors")
    ap.add_argument("--dtypes", default="float32", help=f"comma list of: {', '.join(DTYPES)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the sweep, interleaved, and report the median of the rounds' medians "
                         "(shared machines: a burst of load then hits every backend alike)")
    ap.add_argument("--quick", action="store_true", help="256K params in 16 tensors, few iterations, no torch.compile")
    ap.add_argument("--out", default="bench-results", help="folder for results.json, results.csv, results.png")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--update-defaults", action="store_true",
                    help=f"write the fastest optimlab backend per optimizer and dtype to {DEFAULTS_FILE.name}")
    args = ap.parse_args(argv)
    args.optimizers = _choices(args.optimizers, OPTIMIZERS, "optimizer", ap)
    args.backends = _choices(args.backends, BACKENDS, "backend", ap)
    args.presets = _choices(args.presets, ("custom", *PRESETS), "preset", ap)
    args.dtypes = _choices(args.dtypes, DTYPES, "dtype", ap)
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"unknown device {args.device!r}; valid: cpu, cuda, cuda:N")
    if args.device.type not in ("cpu", "cuda"):
        ap.error(f"unsupported device {args.device.type!r}; valid: cpu, cuda, cuda:N")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        ap.error("device 'cuda' is not available here (no GPU visible to torch); valid: cpu")
    if args.quick:
        args.total, args.count, args.warmup, args.iters = (QUICK[k] for k in ("total", "count", "warmup", "iters"))
        if "torch-compile" in args.backends and len(args.backends) > 1:
            args.backends.remove("torch-compile")
    return args


def sweep(args) -> tuple[list[Row], float]:
    from tqdm import tqdm

    copy_gbps = copy_bandwidth(args.device)
    shapes_of = {p: (custom(args.total, args.count) if p == "custom" else PRESETS[p]()) for p in args.presets}
    jobs = [(o, b, p, d) for p in args.presets for d in args.dtypes for o in args.optimizers for b in args.backends]
    runs: list[list[Row]] = [[] for _ in jobs]
    bar = tqdm(total=len(jobs) * args.rounds, desc="optimizer steps", unit="run", file=sys.stderr)
    for _ in range(args.rounds):
        for i, (opt, backend, preset, dtype) in enumerate(jobs):
            runs[i].append(measure(opt, backend, shapes_of[preset], preset, DTYPES[dtype], args.device,
                                   copy_gbps, args.warmup, args.iters))
            bar.update()
    bar.close()
    rows = [_median_row(r) for r in runs]
    return rows, copy_gbps


def _median_row(rounds: list[Row]) -> Row:
    """The round whose step time is the median (its GB/s etc. follow from that time)."""
    ok = sorted((r for r in rounds if r.status == "ok"), key=lambda r: r.median_ms)
    return ok[(len(ok) - 1) // 2] if ok else rounds[0]


def table(rows: list[Row], copy_gbps: float) -> str:
    head = f"{'optimizer':<11}{'backend':<34}{'preset':<11}{'dtype':<9}{'params':>11}{'tensors':>8}" \
           f"{'median ms':>11}{'GB/s':>8}{'% copy':>8}{'state MB':>10}"
    lines = [f"measured copy bandwidth: {copy_gbps:.1f} GB/s", head, "-" * len(head)]
    for r in rows:
        if r.status != "ok":
            lines.append(f"{r.optimizer:<11}{r.backend:<34}{r.preset:<11}{r.dtype:<9}{r.params:>11}{r.tensors:>8}  {r.status}")
            continue
        lines.append(f"{r.optimizer:<11}{r.backend:<34}{r.preset:<11}{r.dtype:<9}{r.params:>11}{r.tensors:>8}"
                     f"{r.median_ms:>11.3f}{r.gbps:>8.1f}{r.pct_copy:>7.1f}%{r.state_mb:>10.1f}")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.status == "ok"]
    optimizers = list(dict.fromkeys(r.optimizer for r in ok))
    backends = list(dict.fromkeys(r.backend.split("(")[0] for r in ok))
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(optimizers)), 5))
    width = 0.8 / max(1, len(backends))
    for j, b in enumerate(backends):
        ys = [max((r.gbps for r in ok if r.optimizer == o and r.backend.split("(")[0] == b), default=0) for o in optimizers]
        ax.bar([i + j * width for i in range(len(optimizers))], ys, width, label=b)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(optimizers))], optimizers, rotation=30)
    ax.set_ylabel("GB/s")
    ax.set_title(f"optimizer step throughput ({ok[0].device if ok else ''})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_backends(rows: list[Row]) -> dict[str, dict[str, str]]:
    """{algorithm: {dtype: fastest explicit optimlab backend}} from measured rows."""
    best: dict[tuple[str, str], Row] = {}
    for r in rows:
        if r.status != "ok" or not r.backend.startswith("optimlab-") or "default" in r.backend:
            continue
        key = (getattr(optimlab, r.optimizer).algorithm, r.dtype)
        if key not in best or r.median_ms < best[key].median_ms:
            best[key] = r
    out: dict[str, dict[str, str]] = {}
    for (alg, dtype), r in sorted(best.items()):
        out.setdefault(alg, {})[dtype] = r.backend.removeprefix("optimlab-")
    return out


def update_defaults(rows, args, copy_gbps, path: Path = DEFAULTS_FILE) -> None:
    table_ = json.loads(path.read_text()) if path.exists() else {}
    table_[args.device.type] = {
        "device": device_name(args.device),
        "measured": datetime.date.today().isoformat(),
        "command": "python -m optimlab.bench " + " ".join(map(shlex.quote, sys.argv[1:])),
        "copy_gbps": round(copy_gbps, 1),
        "choices": best_backends(rows),
    }
    path.write_text(json.dumps(table_, indent=1, sort_keys=True) + "\n")


def main(argv=None) -> int:
    args = parse(argv)
    rows, copy_gbps = sweep(args)
    print(f"device: {device_name(args.device)}; torch {torch.__version__}; optimlab {optimlab.__version__}")
    print(table(rows, copy_gbps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": device_name(args.device), "torch": torch.__version__, "copy_gbps": copy_gbps,
            "command": "python -m optimlab.bench " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].as_dict()))
        writer.writeheader()
        writer.writerows(r.as_dict() for r in rows)
    if not args.no_plot:
        plot(rows, out / "results.png")
    if args.update_defaults:
        update_defaults(rows, args, copy_gbps)
        print(f"updated {DEFAULTS_FILE}")
    print(f"wrote {out}/results.json, results.csv" + ("" if args.no_plot else ", results.png"))
    return 0
