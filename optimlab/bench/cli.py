"""``python -m optimlab.bench``: optimizer-step throughput per optimizer, backend, size and dtype.

Each cell (optimizer x preset x dtype) builds every backend, then the backends take turns
being timed, so that load from elsewhere hits them alike. A row reports the median step time
with its spread (interquartile range); rows are written to results.csv / results.jsonl as
they come, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import optimlab
from optimlab import _measured
from optimlab import selfcheck as _selfcheck

from . import defaults as _defaults
from .defaults import best_backends, best_by_size  # noqa: F401  (re-exported)
from .measure import BACKENDS, OPTIMIZERS, Row, copy_bandwidth, measure_cell  # noqa: F401
from .presets import PRESETS, custom, numel
from .report import EXTRA_HINT, ResultWriter, noise_warning, plot, table

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULTS_FILE = Path(optimlab.__file__).parent / "_defaults.json"
# Defaults of the options --quick changes; an option given on the command line always wins.
FULL = dict(total=4 << 20, count=64, warmup=3, rounds=10, min_time=1.0)
# --quick also times on one thread: on a shared machine no thread then waits for another to be
# scheduled, which made 2-thread quick runs disagree by 2x (explicit --threads wins)
QUICK = dict(total=1 << 18, count=16, warmup=1, rounds=5, min_time=0.05, threads=1)


def _choices(text: str, valid, what: str, parser) -> list[str]:
    names = list(valid) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        parser.error(f"unknown {what} {', '.join(map(repr, bad or [text]))}; valid: {', '.join(valid)} (or 'all')")
    return names


def _int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = _measured.device_name(device)
    n = torch.get_num_threads()
    return f"{model}, {n} thread{'' if n == 1 else 's'}"


def _fmt(d: dict) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in d.items())


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m optimlab.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizers", default="all", help=f"comma list or 'all' of: {', '.join(OPTIMIZERS)}")
    ap.add_argument("--backends", default=None,
                    help=f"comma list or 'all' (default; --quick: all but torch-compile) of: {', '.join(BACKENDS)}")
    ap.add_argument("--presets", default="custom", help=f"comma list of: custom, {', '.join(PRESETS)}")
    ap.add_argument("--total", type=_int(1), help=f"custom preset: total params (default {FULL['total']}; "
                                                  f"--quick: {QUICK['total']})")
    ap.add_argument("--count", type=_int(1), help=f"custom preset: number of tensors (default {FULL['count']}; "
                                                  f"--quick: {QUICK['count']})")
    ap.add_argument("--dtypes", default="float32", help=f"comma list of: {', '.join(DTYPES)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda when a GPU is visible)")
    ap.add_argument("--threads", type=_int(1), help="CPU threads torch uses (default: torch's default; --quick: 1)")
    ap.add_argument("--warmup", type=_int(1), help=f"untimed steps per backend before timing (default "
                                                   f"{FULL['warmup']}; --quick: {QUICK['warmup']})")
    ap.add_argument("--rounds", type=_int(1),
                    help=f"at least this many timed turns (samples) per backend, taken in turn with the "
                         f"cell's other backends (default {FULL['rounds']}; --quick: {QUICK['rounds']})")
    ap.add_argument("--min-time", type=_seconds, help=f"seconds of timed steps per backend, over its turns "
                                                      f"(default {FULL['min_time']}; --quick: {QUICK['min_time']})")
    ap.add_argument("--iters", type=_int(1), default=0,
                    help="time at least this many steps per backend as well (default: --min-time decides)")
    ap.add_argument("--quick", action="store_true",
                    help=f"quicker defaults: {_fmt(QUICK)}, no torch.compile; explicit options still win")
    ap.add_argument("--out", default="bench-results",
                    help="folder for results.json, results.csv, results.jsonl, results.png")
    ap.add_argument("--no-plot", action="store_true", help="skip results.png (it needs matplotlib)")
    ap.add_argument("--update-defaults", nargs="?", const="", metavar="FILE",
                    help="once the device passes `python -m optimlab.selfcheck --quick`, write the fastest "
                         "optimlab backend per optimizer, dtype and size class to this machine's table "
                         "(in the user's cache, per device and torch/Triton version; the dispatcher reads "
                         "it first), or to FILE (the project's table: optimlab/_defaults.json)")
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.count > args.total:
        ap.error(f"argument --count: {args.count} tensors cannot share --total {args.total} params "
                 f"(at most one tensor per param)")
    args.optimizers = _choices(args.optimizers, OPTIMIZERS, "optimizer", ap)
    explicit_backends = args.backends is not None
    args.backends = _choices(args.backends or "all", BACKENDS, "backend", ap)
    if args.quick and not explicit_backends:
        args.backends.remove("torch-compile")
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
    return args


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"(no progress bar: tqdm is not installed; {EXTRA_HINT})", file=sys.stderr)
        return _NoBar()
    return tqdm(total=total, desc="optimizer steps", unit="run", file=sys.stderr)


def _say(message: str) -> None:
    print(f"optimlab.bench: {message}", file=sys.stderr, flush=True)


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _max_variants(shapes, dtype: torch.dtype, device: torch.device, n: int) -> int | None:
    """How many backends of a cell fit in memory at once (params, grads, up to 3 state
    tensors each), within half of what is available; None: all of them."""
    free = _available_bytes(device)
    each = 5 * numel(shapes) * torch.empty((), dtype=dtype).element_size()
    if free is None or each * n <= free // 2:
        return None
    return max(1, free // 2 // each)


def prepare(args) -> float:
    """Everything slow that is not a measurement, before the progress bar starts: report it
    on stderr. Returns the measured copy bandwidth."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.type == "cpu" and hasattr(os, "getloadavg"):
        load, cpus = os.getloadavg()[0], os.cpu_count() or 1
        if load > 0.5 * cpus:
            _say(f"the machine is busy (load average {load:.1f} on {cpus} CPUs): timings will be noisy"
                 + ("" if args.threads == 1 else "; --threads 1 suffers less from it"))
    ours = [b for b in args.backends if b.startswith("optimlab-")]
    if args.device.type == "cpu" and any(b in ("optimlab-default", "optimlab-cpp") for b in ours):
        from optimlab.kernels import cpu

        _say("loading optimlab's C++ CPU kernels (the first run on a machine compiles them: a minute or more)...")
        t0 = time.perf_counter()
        why = cpu.availability()
        _say(f"  ...{'ready' if why is None else why} ({time.perf_counter() - t0:.1f} s)")
    if args.device.type == "cuda" and any(b in ("optimlab-default", "optimlab-triton") for b in ours):
        _say("Triton kernels compile during each optimizer's untimed warm-up (cached afterwards)")
    if "torch-compile" in args.backends:
        _say("torch.compile compiles each optimizer's step during its untimed warm-up (slow)")
    _say(f"measuring the copy bandwidth of {args.device}...")
    return copy_bandwidth(args.device)


def sweep(args, copy_gbps: float):
    """Yields the rows of one cell (optimizer x preset x dtype) at a time."""
    shapes_of = {p: (custom(args.total, args.count) if p == "custom" else PRESETS[p]()) for p in args.presets}
    cells = [(o, p, d) for p in args.presets for d in args.dtypes for o in args.optimizers]
    bar = _progress(len(cells) * len(args.backends))
    try:
        for opt, preset, dtype in cells:
            bar.set_postfix_str(f"{opt} {preset} {dtype}")
            shapes = shapes_of[preset]
            limit = _max_variants(shapes, DTYPES[dtype], args.device, len(args.backends))
            if limit is not None and limit < len(args.backends):
                _say(f"{preset} {dtype}: {limit} of {len(args.backends)} backends fit in memory at once; "
                     f"they take turns in groups of {limit}")
            yield measure_cell(opt, args.backends, shapes, preset, DTYPES[dtype], args.device, copy_gbps,
                               warmup=args.warmup, rounds=args.rounds, min_time=args.min_time,
                               iters=args.iters, max_variants=limit)
            bar.update(len(args.backends))
    finally:
        bar.close()


def _command(argv=None) -> str:
    return "python -m optimlab.bench " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv))


def selfcheck_failure(device: torch.device, optimizers) -> str | None:
    """None if every backend of ``device`` passes the quick selfcheck (in a fresh process:
    the CPU check interprets Triton's kernels), else its verdict line: a backend that
    is not right on this device must not become its default."""
    _say(f"checking every backend on {device.type} before adopting measured defaults "
         "(python -m optimlab.selfcheck --quick)")
    names = [n for n in optimizers if n in _selfcheck.CONFIGS]
    proc = subprocess.run([sys.executable, "-m", "optimlab.selfcheck", "--device", device.type, "--quick",
                           "--optimizers", ",".join(names)], capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines() or [proc.stderr.strip()]
    return None if proc.returncode == 0 else lines[-1]


def update_defaults(rows, args, copy_gbps, path: Path = DEFAULTS_FILE, command: str | None = None) -> dict:
    command = command or _command()
    entry = _defaults.update_defaults(rows, args.device.type, device_name(args.device), command, copy_gbps, path)
    classes = {cls for per_dtype in entry["by_size"].values() for per_class in per_dtype.values() for cls in per_class}
    if len(classes) == 1:
        _say(f"note: the defaults were measured at one size class only ({next(iter(classes))}); "
             f"param groups of other sizes use it as the nearest (run more --presets to cover them)")
    return entry


def main(argv=None) -> int:
    args = parse(argv)
    command = _command(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"python -m optimlab.bench: error: argument --out: cannot create {out}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        copy_gbps = prepare(args)
    except KeyboardInterrupt:
        _say("interrupted before the first measurement")
        return 130
    device = device_name(args.device)
    meta = {"device": device, "torch": torch.__version__, "optimlab": optimlab.__version__,
            "threads": torch.get_num_threads(), "copy_gbps": copy_gbps, "command": command,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "settings": {k: getattr(args, k) for k in ("warmup", "rounds", "min_time", "iters")},
            "spread": "q1_ms/q3_ms: quartiles of the samples; iqr_pct: (q3 - q1) / median in %"}
    writer = ResultWriter(out, meta)
    interrupted = False
    started = time.perf_counter()
    try:
        for rows in sweep(args, copy_gbps):
            writer.add(rows)
    except KeyboardInterrupt:
        interrupted = True
    writer.close(interrupted=interrupted, seconds=round(time.perf_counter() - started, 1))
    rows = writer.rows
    print(f"device: {device}; torch {torch.__version__}; optimlab {optimlab.__version__}")
    print(table(rows, copy_gbps))
    warning = noise_warning(rows)
    if warning:
        if args.device.type == "cpu" and torch.get_num_threads() > 1:
            warning += " (with other programs running, --threads 1 suffers less: no thread waits for another)"
        print(warning)
    if interrupted:
        _say(f"interrupted: the {len(rows)} rows measured so far are in {out}/results.csv, results.jsonl, "
             f"results.json")
        return 130
    wrote = ["results.json", "results.csv", "results.jsonl"]
    if not args.no_plot:
        title = f"optimizer step, {device}; torch {torch.__version__}; optimlab {optimlab.__version__}"
        if plot(rows, out / "results.png", copy_gbps, title):
            wrote.append("results.png")
    if args.update_defaults is not None:
        path = Path(args.update_defaults) if args.update_defaults else _measured.user_table_path(args.device)
        failed = selfcheck_failure(args.device, args.optimizers)
        if failed:
            _say(f"the measured defaults were not written: {failed}")
            return 1
        path.parent.mkdir(parents=True, exist_ok=True)
        update_defaults(rows, args, copy_gbps, path=path, command=command)
        print(f"updated {path}")
    print(f"wrote {out}/" + ", ".join(wrote))
    return 0
