"""``--update-defaults``: the measured-fastest optimlab backend per algorithm, dtype and size class.

The table lands in ``optimlab/_defaults.json``, one entry per device type (the entries of
other device types are kept)::

    {"cpu": {
      "format": 2,
      "device": "AMD EPYC, 2 threads", "measured": "2026-11-21", "command": "python -m optimlab.bench ...",
      "copy_gbps": 30.7,
      "size_class": "<how a param group's size class is computed, see SIZE_CLASS_RULE>",
      "by_size": {"adam": {"float32": {"t1-n4": {
          "backend": "cpp", "tensors_bucket": 1, "numel_bucket": 4,
          "tensors": [8, 64], "mean_numel": [4096, 32768],
          "measured": [{"optimizer": "Adam", "preset": "custom", "tensors": 16, "mean_numel": 16384,
                        "ms": {"cpp": 0.25, "foreach": 0.61, "forloop": 0.84}}]}}}},
      "choices": {"adam": {"float32": "cpp"}}}}

``by_size`` is what a dispatcher should read (exact size class, else the nearest measured
one); ``choices`` (one backend per algorithm and dtype, the best over every measured size
class) is the flat table dispatchers without size classes read.

Where several measurements share a key (several presets in one size class, Adam and AdamW
sharing the ``adam`` algorithm, or all size classes for ``choices``), the backend chosen is
the one with the smallest geometric mean of its time relative to the fastest backend of each
measurement: every measurement has one vote, no single preset decides for the others.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import optimlab

from .._measured import SIZE_CLASS_RULE, _bucket, lookup, rank  # noqa: F401  (lookup: the dispatcher's)
from .measure import OURS, Row

FORMAT = 2


def _explicit(row: Row) -> str | None:
    """The explicit optimlab backend a row measured, else None."""
    if row.status != "ok" or row.median_ms is None or not row.backend.startswith("optimlab-"):
        return None
    name = row.backend.removeprefix("optimlab-")
    return name if name in OURS else None  # not optimlab-default(...)


def pick(measurements: list[dict[str, float]]) -> str:
    """The backend with the smallest geometric mean of time / fastest time over the measurements
    (among the backends measured in all of them, else in any; ties: ``OURS`` order)."""
    return rank(measurements, OURS)[0]


def best_by_size(rows: list[Row]) -> dict[str, dict[str, dict[str, dict]]]:
    """{algorithm: {dtype: {size class: entry}}} (entry layout: see the module docstring)."""
    timings: dict[tuple, dict[str, float]] = {}
    points: dict[tuple, Row] = {}
    for r in rows:
        backend = _explicit(r)
        if backend is None:
            continue
        alg = getattr(optimlab, r.optimizer).algorithm
        key = (alg, r.dtype, r.size_class, r.optimizer, r.preset, r.tensors, r.params)
        timings.setdefault(key, {})[backend] = r.median_ms
        points[key] = r
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for key in sorted(timings):
        alg, dtype, cls, optimizer, preset, tensors, params = key
        entry = out.setdefault(alg, {}).setdefault(dtype, {}).get(cls)
        if entry is None:
            i, j = _bucket(max(1, tensors)), _bucket(params // max(1, tensors))
            entry = {"tensors_bucket": i, "numel_bucket": j, "tensors": [8**i, 8 ** (i + 1)],
                     "mean_numel": [8**j, 8 ** (j + 1)], "measured": []}
            out[alg][dtype][cls] = entry
        entry["measured"].append({"optimizer": optimizer, "preset": preset, "tensors": tensors,
                                  "mean_numel": params // max(1, tensors),
                                  "ms": {b: round(ms, 4) for b, ms in sorted(timings[key].items())}})
    for per_dtype in out.values():
        for per_class in per_dtype.values():
            for entry in per_class.values():
                entry["backend"] = pick([m["ms"] for m in entry["measured"]])
    return out


def flat_choices(by_size: dict) -> dict[str, dict[str, str]]:
    """{algorithm: {dtype: backend}}: one choice over every measured size class."""
    return {
        alg: {dtype: pick([m["ms"] for e in classes.values() for m in e["measured"]])
              for dtype, classes in sorted(per_dtype.items())}
        for alg, per_dtype in sorted(by_size.items())
    }


def best_backends(rows: list[Row]) -> dict[str, dict[str, str]]:
    """{algorithm: {dtype: fastest explicit optimlab backend}} over all measured size classes."""
    return flat_choices(best_by_size(rows))


def update_defaults(rows: list[Row], device_type: str, device: str, command: str, copy_gbps: float,
                    path: Path) -> dict:
    """Merge the rows' choices into ``path`` (size classes measured now replace the same classes
    measured before on the same device; another device's table is replaced). Returns the entry."""
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        table = {}
    old = table.get(device_type, {})
    by_size = old.get("by_size", {}) if old.get("format") == FORMAT and old.get("device") == device else {}
    for alg, per_dtype in best_by_size(rows).items():
        for dtype, per_class in per_dtype.items():
            by_size.setdefault(alg, {}).setdefault(dtype, {}).update(per_class)
    table[device_type] = {
        "format": FORMAT,
        "device": device,
        "measured": datetime.date.today().isoformat(),
        "command": command,
        "copy_gbps": round(copy_gbps, 1),
        "size_class": SIZE_CLASS_RULE,
        "by_size": by_size,
        "choices": flat_choices(by_size),
    }
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table[device_type]

