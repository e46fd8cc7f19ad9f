"""fp32 vs naive bf16 vs bf16+Kahan vs bf16+stochastic rounding vs mixed precision, on real
data: final loss and bytes per parameter (plus bf16+Kahan with float32 AdamW state).

    python benchmarks/bench_low_precision.py [--tasks gpt digits] [--modes fp32 bf16 ...]
        [--gpt-steps 600] [--digits-steps 1000] [--gpt-lr 3e-4] [--digits-lr 3e-4]
        [--eval-every 50] [--seed 0] [--rounding-seed 0] [--threads 1]
        [--out benchmarks/results/cpu-low-precision]

The tasks, modes, models and training loop are ``examples/low_precision.py``'s (read its
docstring): a tiny character-level GPT on the source of a few standard library modules, and
an MLP on scikit-learn's digits (skipped, with a message, without scikit-learn). Every mode
of a task starts from the same float32 init (rounded to bf16 in the bf16 modes) and sees
the same batches for the same number of steps, with ``optimlab.AdamW`` at a constant lr.

Per run: the final train loss (mean over the last 10% of the steps), the held-out loss after
the last step, both relative to fp32's, and the bytes allocated for params + grads + AdamW
state after the last step (``untyped_storage().nbytes()`` over distinct storages) per
parameter. Writes ``OUT.md`` (table), ``OUT.json`` (raw numbers, loss curves included) and
``OUT.png`` (loss curves per task, bytes per parameter; needs matplotlib).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimlab._measured import device_name  # noqa: E402


def _load_example():
    spec = importlib.util.spec_from_file_location("optimlab_example_low_precision",
                                                  ROOT / "examples" / "low_precision.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


ex = _load_example()
MODES, TASKS = ex.MODES, ex.TASKS
#: the criterion the issue states: a compensated bf16 mode within this of fp32's final loss
TOLERANCE = 0.02
COLORS = {"fp32": "black", "bf16": "tab:red", "bf16+kahan": "tab:blue", "bf16+sr": "tab:green",
          "bf16+kahan+f32state": "tab:purple",
          "mixed": "tab:orange"}


def _isa() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def environment(args) -> dict:
    import os

    return dict(date=datetime.date.today().isoformat(), python=platform.python_version(),
                torch=torch.__version__, cpu=device_name(torch.device("cpu")), cores=os.cpu_count(), isa=_isa(),
                threads=args.threads, matmul=args.matmul,
                load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)


def _rel(x: float, ref: float) -> float:
    return (x - ref) / ref * 100.0


def _round(xs: list[float]) -> list[float]:
    return [float(f"{x:.6g}") for x in xs]


def run(args, log=print) -> dict:
    """Every task x mode; returns the JSON document."""
    ex.EMULATE_BF16_MATMUL = args.matmul == "emulated"
    torch.set_num_threads(args.threads)
    doc = {"command": " ".join(["python benchmarks/bench_low_precision.py"] + args.argv),
           "environment": environment(args), "tolerance_pct": TOLERANCE * 100,
           "rounding_seed": args.rounding_seed, "seed": args.seed, "tasks": {},
           "skipped": {}}
    for name in args.tasks:
        if name == "digits":
            try:
                import sklearn  # noqa: F401
            except ImportError:
                msg = "scikit-learn is not installed (pip install scikit-learn): digits skipped"
                log(msg)
                doc["skipped"]["digits"] = msg
                continue
            task, steps, lr = ex.digits_task(), args.digits_steps, args.digits_lr
        else:
            task, steps, lr = ex.gpt_task(), args.gpt_steps, args.gpt_lr
        runs = {}
        for mode in args.modes:
            r = ex.train(task, mode, steps, lr, args.seed, args.rounding_seed, args.eval_every)
            r["train_losses"] = _round(r["train_losses"])
            r["heldout"] = [(s, float(f"{v:.6g}")) for s, v in r["heldout"]]
            runs[mode] = r
            log(f"{name:6s} {mode:19s} train {r['final_train_loss']:.4f} held-out "
                f"{r['final_heldout_loss']:.4f} {r['memory']['per_param']:5.2f} B/param "
                f"{r['seconds']:6.1f} s")
        doc["tasks"][name] = {"info": task.info, "steps": steps, "lr": lr, "runs": runs}
        if "fp32" in runs:
            ref = runs["fp32"]
            for r in runs.values():
                r["train_vs_fp32_pct"] = _rel(r["final_train_loss"], ref["final_train_loss"])
                r["heldout_vs_fp32_pct"] = _rel(r["final_heldout_loss"], ref["final_heldout_loss"])
    return doc


# ---- report -------------------------------------------------------------------------------------
def _pct(r: dict, key: str) -> str:
    return "" if key not in r else f"{r[key]:+.2f}%"


def verdicts(doc: dict) -> list[str]:
    """One line per task: which compensated mode is within the tolerance of fp32, how naive
    bf16 compares, and the memory saving."""
    lines = []
    for name, t in doc["tasks"].items():
        runs = t["runs"]
        if "fp32" not in runs:
            continue
        parts = []
        for mode in ("bf16+kahan", "bf16+sr", "bf16+kahan+f32state", "bf16"):
            if mode in runs:
                r = runs[mode]
                worst = max(abs(r["train_vs_fp32_pct"]), abs(r["heldout_vs_fp32_pct"]))
                ok = "within" if worst <= doc["tolerance_pct"] else "NOT within"
                dt = r["final_train_loss"] - runs["fp32"]["final_train_loss"]
                dh = r["final_heldout_loss"] - runs["fp32"]["final_heldout_loss"]
                parts.append(f"{mode} {ok} {doc['tolerance_pct']:g}% of fp32 (train "
                             f"{_pct(r, 'train_vs_fp32_pct')} = {dt:+.4f}, held-out "
                             f"{_pct(r, 'heldout_vs_fp32_pct')} = {dh:+.4f})")
        fp = runs["fp32"]["memory"]["per_param"]
        mem = ", ".join(f"{m} {r['memory']['per_param']:.2f} B/param "
                        f"({(1 - r['memory']['per_param'] / fp) * 100:.0f}% less)"
                        for m, r in runs.items() if m != "fp32")
        lines.append(f"- **{name}**: " + "; ".join(parts) + f". Memory vs fp32's {fp:.2f} B/param: {mem}.")
    return lines


def markdown(doc: dict) -> str:
    env = doc["environment"]
    out = ["# Low-precision training on the CPU: fp32, bf16, bf16+Kahan, bf16+SR, mixed "
           "(+ bf16+Kahan with float32 state)", "",
           f"- command: `{doc['command'].strip()}`",
           f"- machine: {env['cpu']}, {env['cores']} cores ({env['isa']} torch kernels), shared: "
           f"load average {', '.join(f'{x:.2f}' for x in env['load_average'] or [])} at the end; "
           f"{env['threads']} torch thread(s)",
           f"- torch {env['torch']}, Python {env['python']}, {env['date']}",
           "- optimizer: `optimlab.AdamW` (default betas, eps, weight_decay 0.01), constant lr; "
           "bf16 modes: params and grads in bf16, AdamW state in bf16 (`state_dtype` unset) except "
           "in bf16+kahan+f32state (`kahan_sum=True, state_dtype=torch.float32`); bf16+sr: "
           f"`stochastic_rounding=True, rounding_seed={doc.get('rounding_seed', 0)}`; mixed: "
           "float32 params and state, "
           "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`",
           "- bf16 matmuls: " + ("bf16 inputs, float32 accumulation, bf16 output, run as a float32 "
                                 "GEMM (`--matmul emulated`)" if env["matmul"] == "emulated"
                                 else "torch's bf16 GEMM (`--matmul native`)"),
           "- final train loss: mean over the last 10% of the steps; held-out loss after the last "
           "step, the model in its training precision; % vs fp32: (loss - fp32's) / fp32's",
           "- B/param: bytes allocated for params + grads + AdamW state (exp_avg, exp_avg_sq, step; "
           "kahan_comp; sr_seed, sr_step) after the last step, distinct storages "
           "(`untyped_storage().nbytes()`), over the parameter count",
           "- time/step: the run's wall time (its held-out evaluations included) over its steps", ""]
    for name, msg in doc["skipped"].items():
        out += [f"**{name}: skipped** ({msg})", ""]
    for name, t in doc["tasks"].items():
        info = t["info"]
        if name == "gpt":
            what = (f"character-level GPT ({info['layers']} blocks, d_model {info['d_model']}, "
                    f"{info['heads']} heads, context {info['context']}, vocab {info['vocab']}) on the "
                    f"source of `{'`, `'.join(info['text_modules'])}` ({info['text_chars']} characters; "
                    f"held-out: {info['heldout_windows']} windows of the last 10%), batch {info['batch']}")
        else:
            what = (f"MLP 64-{info['hidden']}-{info['hidden']}-10 on scikit-learn's digits "
                    f"({info['train_images']} train, {info['heldout_images']} held-out images), batch "
                    f"{info['batch']}")
        n = next(iter(t["runs"].values()))["memory"]["numel"]
        out += [f"## {name}: {what}; {n} params, {t['steps']} steps, lr {t['lr']:g}", "",
                "| mode | final train loss | vs fp32 | held-out loss | vs fp32 | B/param "
                "| params + grads + state (+ kahan) | time/step |",
                "|---|---:|---:|---:|---:|---:|---|---:|"]
        for mode, r in t["runs"].items():
            m = r["memory"]
            split = f"{m['params'] / n:.2f} + {m['grads'] / n:.2f} + {m['state'] / n:.2f}"
            if m["kahan_comp"]:
                split += f" (+ {m['kahan_comp'] / n:.2f})"
            out.append(f"| {mode} | {r['final_train_loss']:.4f} | {_pct(r, 'train_vs_fp32_pct')} | "
                       f"{r['final_heldout_loss']:.4f} | {_pct(r, 'heldout_vs_fp32_pct')} | "
                       f"{m['per_param']:.2f} | {split} | {r['seconds'] / r['steps'] * 1e3:.1f} ms |")
        out.append("")
    out += ["## Summary", ""] + verdicts(doc) + [""]
    out += [f"Total wall time: {doc['seconds']:.0f} s. Plot: `{Path(doc['png']).name}` "
            "(loss curves: train loss as a 25-step moving average, held-out loss as dots; "
            "bytes per parameter). Raw numbers and curves: "
            f"`{Path(doc['json']).name}`." if doc.get("png") else
            f"Total wall time: {doc['seconds']:.0f} s. No plot (matplotlib missing). Raw numbers: "
            f"`{Path(doc['json']).name}`.", ""]
    return "\n".join(out)


def _moving_average(xs: list[float], k: int) -> tuple[list[int], list[float]]:
    if len(xs) < k:
        k = 1
    c = torch.tensor(xs, dtype=torch.float64).cumsum(0)
    avg = torch.cat([c[k - 1:k], c[k:] - c[:-k]]) / k
    return list(range(k, len(xs) + 1)), avg.tolist()


def plot(doc: dict, path: Path) -> bool:
    """Loss curves per task and bytes per parameter; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter, NullFormatter
    except ImportError:
        return False
    tasks = list(doc["tasks"].items())
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5.2 * (len(tasks) + 1), 4.2))
    for ax, (name, t) in zip(axes, tasks):
        for mode, r in t["runs"].items():
            xs, ys = _moving_average(r["train_losses"], 25)
            ax.plot(xs, ys, color=COLORS.get(mode), lw=1.2, alpha=0.85,
                    ls="--" if mode == "mixed" else "-", label=f"{mode} (train, 25-step mean)")
            hs, hv = zip(*r["heldout"])
            ax.plot(hs, hv, "o", color=COLORS.get(mode), ms=3)
        ax.plot([], [], "o", color="gray", ms=3, label="held-out loss")
        ax.set_title(f"{name}: {t['steps']} steps, AdamW lr {t['lr']:g}")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        if name == "digits":  # from ~2.3 down to a few hundredths
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            ax.set_yticks([t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5) if lo <= t <= hi])
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    ax = axes[-1]
    modes = [m for m in MODES if any(m in t["runs"] for _, t in tasks)]
    width = 0.8 / max(1, len(tasks))
    for j, (name, t) in enumerate(tasks):
        vals = [t["runs"][m]["memory"]["per_param"] if m in t["runs"] else 0 for m in modes]
        bars = ax.bar([i + j * width for i in range(len(modes))], vals, width, label=name,
                      color=[COLORS.get(m) for m in modes], alpha=1.0 - 0.35 * j, edgecolor="black")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + width * (len(tasks) - 1) / 2 for i in range(len(modes))],
                  [m.replace("+f32state", "\n+f32state") for m in modes], fontsize=8)
    ax.set_ylabel("bytes / param")
    ax.set_title("params + grads + AdamW state per param" + (f"\n(bars: {', '.join(n for n, _ in tasks)})"
                                                             if len(tasks) > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    env = doc["environment"]
    fig.suptitle(f"optimlab.AdamW, bf16 writes: plain vs Kahan vs stochastic rounding; torch "
                 f"{env['torch']}, {env['cpu']}, {env['threads']} thread(s), {env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--gpt-steps", type=ex.positive_int, default=600)
    ap.add_argument("--digits-steps", type=ex.positive_int, default=1000)
    ap.add_argument("--gpt-lr", type=ex.positive_float, default=3e-4)
    ap.add_argument("--digits-lr", type=ex.positive_float, default=3e-4)
    ap.add_argument("--eval-every", type=ex.positive_int, default=50,
                    help="held-out loss every N steps (and after the last)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounding-seed", type=int, default=0)
    ap.add_argument("--threads", type=ex.positive_int, default=1)
    ap.add_argument("--matmul", choices=("emulated", "native"), default="emulated",
                    help="bf16 matmuls: float32 GEMM on bf16 values (default) or torch's bf16 GEMM")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu-low-precision"),
                    help="path prefix of the .md, .json and .png written")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: rewrite OUT.md and OUT.png from OUT.json (a saved run)")
    args = ap.parse_args(argv)
    if not 0 <= args.rounding_seed < 2**64:
        ap.error(f"--rounding-seed must be in [0, 2**64), got {args.rounding_seed}")
    args.tasks = list(dict.fromkeys(args.tasks))
    args.modes = [m for m in MODES if m in args.modes]  # fp32 first: the reference
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    md, js, png = (out.with_name(out.name + ext) for ext in (".md", ".json", ".png"))
    if args.report_only:
        doc = json.loads(js.read_text())
    else:
        start = time.perf_counter()
        doc = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc["seconds"] = time.perf_counter() - start
        doc["environment"]["load_average"] = environment(args)["load_average"]  # at the end
        doc["json"] = js.name
    doc["png"] = png.name if plot(doc, png) else None
    if doc["png"] is None:
        print("matplotlib is not installed: no plot")
    if not args.report_only:
        js.write_text(json.dumps(doc, indent=1) + "\n")
    md.write_text(markdown(doc))
    print("\n".join(verdicts(doc)))
    print(f"wrote {md}, {js}" + (f", {png}" if doc["png"] else "") + f" ({doc['seconds']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
