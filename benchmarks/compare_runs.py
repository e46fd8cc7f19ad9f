"""Do two ``python -m optimlab.bench`` runs agree? For each optimlab-default row: both medians
with their quartiles, whether the interquartile ranges overlap, and the machine's own drift
between the runs (the ratio of torch's fastest rows), which no spread within one run shows.

    python benchmarks/compare_runs.py RUN_A RUN_B     (folders given to the bench's --out)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]


def _key(r: dict) -> tuple:
    return r["optimizer"], r.get("preset"), r.get("dtype")


def defaults(folder: Path) -> dict:
    return {_key(r): r for r in _rows(folder)
            if r.get("backend", "").startswith("optimlab-default") and r.get("status") == "ok"}


def torch_best(folder: Path) -> dict:
    best: dict = {}
    for r in _rows(folder):
        if r.get("backend", "").startswith("torch-") and r.get("status") == "ok":
            best[_key(r)] = min(best.get(_key(r), float("inf")), r["median_ms"])
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    a, b = defaults(args.run_a), defaults(args.run_b)
    ta, tb = torch_best(args.run_a), torch_best(args.run_b)
    print("| optimizer | dtype | A median [q1-q3] ms | B median [q1-q3] ms | B/A | IQRs | torch's fastest B/A |")
    print("|---|---|---|---|---:|---|---:|")
    common = [k for k in sorted(a) if k in b]
    overlap = 0
    for k in common:
        ra, rb = a[k], b[k]
        ok = ra["q1_ms"] <= rb["q3_ms"] and rb["q1_ms"] <= ra["q3_ms"]
        overlap += ok
        drift = f"{tb[k] / ta[k]:.2f}" if k in ta and k in tb else "-"
        print(f"| {k[0]} | {k[2]} | {ra['median_ms']:.3f} [{ra['q1_ms']:.3f}-{ra['q3_ms']:.3f}] | "
              f"{rb['median_ms']:.3f} [{rb['q1_ms']:.3f}-{rb['q3_ms']:.3f}] | {rb['median_ms'] / ra['median_ms']:.2f} | "
              f"{'overlap' if ok else 'disjoint'} | {drift} |")
    print(f"\n{overlap} of {len(common)} optimlab-default rows: interquartile ranges overlap")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
