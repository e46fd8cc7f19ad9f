"""The benchmark's outputs: the printed table, results written as they come, the plot."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .measure import NOISY_IQR_PCT, ROW_FIELDS, Row

EXTRA_HINT = "pip install 'optimlab[bench]'"


def table(rows: list[Row], copy_gbps: float) -> str:
    head = (f"{'optimizer':<11}{'backend':<28}{'preset':<11}{'dtype':<9}{'params':>10}{'tensors':>8}"
            f"{'median ms':>11}{'IQR %':>8}{'GB/s':>8}{'% copy':>8}{'state MB':>10}")
    lines = [f"measured copy bandwidth: {copy_gbps:.1f} GB/s", head, "-" * len(head)]
    for r in rows:
        lead = f"{r.optimizer:<11}{r.backend:<28}{r.preset:<11}{r.dtype:<9}{r.params:>10}{r.tensors:>8}"
        if r.status != "ok":
            lines.append(f"{lead}  {r.status}")
            continue
        flag = "!" if r.noisy else " "
        lines.append(f"{lead}{r.median_ms:>11.3f}{r.iqr_pct:>7.1f}{flag}{r.gbps:>8.1f}{r.pct_copy:>7.1f}%"
                     f"{r.state_mb:>10.1f}")
    return "\n".join(lines)


def noise_warning(rows: list[Row]) -> str | None:
    noisy = [r for r in rows if r.noisy]
    if not noisy:
        return None
    worst = max(noisy, key=lambda r: r.iqr_pct)
    return (f"warning: {len(noisy)} of {sum(r.status == 'ok' for r in rows)} rows (marked !) have an "
            f"interquartile range above {NOISY_IQR_PCT:.0f}% of their median (worst: {worst.optimizer} "
            f"{worst.backend}, {worst.iqr_pct:.0f}%): the machine is noisy; close other programs, or "
            f"raise --min-time/--rounds, before trusting differences of that size")


class ResultWriter:
    """results.csv and results.jsonl get each row as soon as it is measured (flushed);
    results.json (meta and rows) is rewritten, atomically, after every cell."""

    def __init__(self, out: Path, meta: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta)
        self.rows: list[Row] = []
        self._csv_file = open(self.out / "results.csv", "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=list(ROW_FIELDS))
        self._csv.writeheader()
        self._csv_file.flush()
        self._jsonl = open(self.out / "results.jsonl", "w")
        self._write_json()

    def add(self, rows: list[Row]) -> None:
        for r in rows:
            d = r.as_dict()
            self._csv.writerow(d)
            self._jsonl.write(json.dumps(d) + "\n")
        self._csv_file.flush()
        self._jsonl.flush()
        self.rows += rows
        self._write_json()

    def _write_json(self) -> None:
        tmp = self.out / f".results.json.{os.getpid()}"
        tmp.write_text(json.dumps({"meta": self.meta, "rows": [r.as_dict() for r in self.rows]}, indent=1))
        os.replace(tmp, self.out / "results.json")

    def close(self, **meta) -> None:
        self.meta.update(meta)
        self._write_json()
        self._csv_file.close()
        self._jsonl.close()


def _short(n: int) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def plot(rows: list[Row], path: Path, copy_gbps: float, title: str) -> bool:
    """Two panels per preset and dtype: speed-up over torch's fastest option (step time when
    no torch backend was measured) and GB/s against the copy bandwidth line. Error bars:
    the interquartile range. False
    (with a one-line note on stderr) when matplotlib is not installed."""
    import sys

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped: matplotlib is not installed ({EXTRA_HINT})", file=sys.stderr)
        return False

    ok = [r for r in rows if r.status == "ok"]
    panels = list(dict.fromkeys((r.preset, r.dtype) for r in ok))
    if not panels:
        return False
    backends = list(dict.fromkeys(r.backend.split("(")[0] for r in ok))
    colors = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    n_opt = max(len({r.optimizer for r in ok if (r.preset, r.dtype) == p}) for p in panels)
    fig, axes = plt.subplots(2 * len(panels), 1, figsize=(max(9.0, 0.75 * n_opt + 2), 3.4 * 2 * len(panels) + 0.6),
                             squeeze=False)
    for (preset, dtype), ax_speed, ax_bw in zip(panels, axes[0::2, 0], axes[1::2, 0]):
        cell = [r for r in ok if (r.preset, r.dtype) == (preset, dtype)]
        optimizers = list(dict.fromkeys(r.optimizer for r in cell))
        torch_best = {o: min((r.median_ms for r in cell if r.optimizer == o and r.backend.startswith("torch-")),
                             default=None) for o in optimizers}
        relative = any(v is not None for v in torch_best.values())
        width = 0.8 / max(1, len(backends))
        for j, b in enumerate(backends):
            xs, speed, speed_err, bw, bw_err = [], [], [], [], []
            for i, o in enumerate(optimizers):
                r = next((r for r in cell if r.optimizer == o and r.backend.split("(")[0] == b), None)
                if r is None or (relative and torch_best[o] is None):
                    continue
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ref = torch_best[o] if relative else None
                # error bars: the interquartile range of the step time
                lo_t, hi_t = r.q1_ms or r.median_ms, r.q3_ms or r.median_ms
                if relative:
                    y = ref / r.median_ms
                    speed.append(y)
                    speed_err.append((y - ref / hi_t, ref / lo_t - y))
                else:
                    speed.append(r.median_ms)
                    speed_err.append((r.median_ms - lo_t, hi_t - r.median_ms))
                bw.append(r.gbps)
                bw_err.append((r.gbps - r.gbps * r.median_ms / hi_t, r.gbps * r.median_ms / lo_t - r.gbps))
            if not xs:
                continue
            ax_speed.bar(xs, speed, width, yerr=list(zip(*speed_err)), color=colors[b], label=b, capsize=1.5)
            ax_bw.bar(xs, bw, width, yerr=list(zip(*bw_err)), color=colors[b], label=b, capsize=1.5)
        sizes = cell[0]
        where = f"{preset}: {_short(sizes.params)} params in {sizes.tensors} tensors, {dtype}"
        ax_speed.set_yscale("log")
        if relative:
            ax_speed.axhline(1.0, color="black", linewidth=0.8)
            ax_speed.set_ylabel("speed-up over torch's fastest option")
        else:
            ax_speed.set_ylabel("step time (ms)")
        ax_speed.set_title(where, fontsize=9)
        ax_bw.axhline(copy_gbps, color="black", linestyle="--", linewidth=0.8)
        ax_bw.annotate(f"measured copy bandwidth {copy_gbps:.1f} GB/s", (1, copy_gbps),
                       xycoords=("axes fraction", "data"), xytext=(-2, 2), textcoords="offset points",
                       fontsize=7, ha="right")
        ax_bw.set_ylabel("GB/s (bytes an ideal fused step moves)")
        ax_bw.set_title(where, fontsize=9)
        for ax in (ax_speed, ax_bw):
            ax.set_xticks(range(len(optimizers)), optimizers, rotation=30, fontsize=8)
    height = fig.get_figheight()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 4), fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.35 / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.8 / height))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
