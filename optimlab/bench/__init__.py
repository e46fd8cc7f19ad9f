"""optimlab's optimizer-step benchmark: run ``python -m optimlab.bench --help``."""

from .measure import BACKENDS, OPTIMIZERS, Row, copy_bandwidth, measure, measure_cell, size_class
from .presets import PRESETS

__all__ = ["BACKENDS", "OPTIMIZERS", "PRESETS", "Row", "copy_bandwidth", "measure", "measure_cell", "size_class"]
