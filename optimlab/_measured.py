"""Measured default backends: which table decides for a device, and its lookup by size class.

Two tables; the first that has an entry for the device decides:

1. **this machine's table**, written by ``python -m optimlab.bench --update-defaults`` after
   the device passed ``python -m optimlab.selfcheck``: one file per device,
   ``<device>-torch<version>-triton<version>.json`` (so a new GPU, torch or Triton is
   measured anew) in ``$OPTIMLAB_DEFAULTS_DIR``, else in ``defaults/`` of the user's cache
   (``$OPTIMLAB_CACHE_DIR``, else ``$XDG_CACHE_HOME/optimlab`` or ``~/.cache/optimlab``);
2. **the committed table**, ``optimlab/_defaults.json``, measured by the project. A CPU
   uses its ``cpu`` entry whatever the CPU; a CUDA device only an entry measured on a
   device of the same name (the Triton kernels win or lose by GPU).

Each table entry is keyed by algorithm, dtype and *size class* (powers of 8 of a param
group's tensor count and mean tensor size, ``t{i}-n{j}``): a group uses its own class,
else the nearest one measured, else the entry's flat ``choices``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import math
import os
import platform
import re
from pathlib import Path

import torch

__all__ = ["committed_applies", "device_name", "lookup", "rank", "ranking", "size_class", "user_table",
           "user_table_path"]
SIZE_CLASS_RULE = (
    "t{i}-n{j} with i = (tensors.bit_length() - 1) // 3 and j = ((numel // tensors).bit_length() - 1) // 3, "
    "where tensors is the number of params (with grads) in the param group and numel their total "
    "element count: powers-of-8 buckets, 8**i <= tensors < 8**(i+1). Look up by_size[algorithm][dtype]"
    "[class]; if absent, take the entry minimising |tensors_bucket - i| + |numel_bucket - j| (ties: the "
    "smaller key); if by_size has no entry for the algorithm and dtype, use choices[algorithm][dtype]."
)


def _bucket(x: int) -> int:
    return (max(1, int(x)).bit_length() - 1) // 3


def size_class(tensors: int, numel: int) -> tuple[int, int]:
    """The (tensor count, mean tensor size) buckets of a param group: powers of 8."""
    tensors = max(1, tensors)
    return _bucket(tensors), _bucket(numel // tensors)


def _class(entry: dict, algorithm: str, dtype: str, tensors: int, numel: int) -> dict | None:
    """The size-class entry of ``entry`` for the group: its own class, else the nearest one
    measured (bucket distance, ties: the smaller key); None without ``by_size`` data."""
    classes = entry.get("by_size", {}).get(algorithm, {}).get(dtype, {})
    if not classes:
        return None
    i, j = size_class(tensors, numel() if callable(numel) else numel)
    hit = classes.get(f"t{i}-n{j}")
    if hit is None:
        _, hit = min(classes.items(), key=lambda kv: (
            abs(kv[1]["tensors_bucket"] - i) + abs(kv[1]["numel_bucket"] - j), kv[0]))
    return hit


def lookup(entry: dict, algorithm: str, dtype: str, tensors: int, numel) -> str | None:
    """The backend ``entry`` (one device's table) measured fastest for a group of ``tensors``
    params holding ``numel`` elements (an int, or a function returning it, called only when
    the measured size classes disagree): its size class, else the nearest measured class,
    else the flat ``choices``; None if nothing."""
    classes = entry.get("by_size", {}).get(algorithm, {}).get(dtype, {})
    picks = {c["backend"] for c in classes.values()}
    if len(picks) == 1:  # every class measured the same fastest: the group's size is moot
        return picks.pop()
    hit = _class(entry, algorithm, dtype, tensors, numel)
    if hit is not None:
        return hit["backend"]
    return entry.get("choices", {}).get(algorithm, {}).get(dtype)


def ranking(entry: dict, algorithm: str, dtype: str, tensors: int, numel) -> list[str]:
    """Every backend the group's size class measured, fastest first (by :func:`rank`): the
    order a default falls back along when the fastest cannot run here."""
    hit = _class(entry, algorithm, dtype, tensors, numel)
    return rank([m["ms"] for m in hit["measured"]]) if hit is not None else []


def rank(measurements: list[dict[str, float]], tiebreak: tuple[str, ...] = ()) -> list[str]:
    """Backends by the geometric mean of their time relative to the fastest of each
    measurement (``{backend: ms}`` each; every measurement has one vote), smallest first;
    backends measured in every measurement before the others; ties by ``tiebreak`` order."""
    measurements = [m for m in measurements if m]
    if not measurements:
        return []
    common = set.intersection(*(set(m) for m in measurements))

    def score(b: str) -> tuple[bool, float, int, str]:
        logs = [math.log(m[b] / min(m.values())) for m in measurements if b in m]
        order = tiebreak.index(b) if b in tiebreak else len(tiebreak)
        return b not in common, sum(logs) / len(logs), order, b

    return sorted(set().union(*measurements), key=score)


def device_name(device: torch.device) -> str:
    """What a table is keyed by: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _tables_dir() -> Path:
    """``$OPTIMLAB_DEFAULTS_DIR``, else ``defaults/`` in optimlab's cache directory."""
    if os.environ.get("OPTIMLAB_DEFAULTS_DIR"):
        return Path(os.environ["OPTIMLAB_DEFAULTS_DIR"])
    from .kernels.cpp_build import cache_root  # (imports _dispatch, which imports this module)

    return cache_root() / "defaults"


def user_table_path(device: torch.device) -> Path:
    """This machine's table for ``device`` (torch and Triton versions in the name)."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device_name(device)).strip("-").lower()
    torch_version = torch.__version__.split("+")[0]
    return _tables_dir() / f"{device.type}-{slug}-torch{torch_version}-triton{_version('triton')}.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@functools.cache
def user_table(device_type: str, index: int | None = None) -> tuple[dict, str]:
    """(this machine's table entry for the device, its path); ({}, "") if there is none."""
    if device_type == "cuda" and not torch.cuda.is_available():
        return {}, ""
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    path = user_table_path(device)
    try:
        entry = json.loads(path.read_text()).get(device_type, {})
    except (OSError, ValueError):
        return {}, ""
    return (entry, str(path)) if entry else ({}, "")


def committed_applies(entry: dict, device_type: str, index: int | None = None) -> bool:
    """Whether the committed table's entry speaks for this device: any CPU; a GPU of the
    name it was measured on."""
    if not entry:
        return False
    if device_type != "cuda":
        return True
    if not torch.cuda.is_available():
        return False
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    return entry.get("device") == device_name(device)
