"""optimlab: a drop-in replacement for ``torch.optim`` with faster backends.

Change ``import torch.optim as optim`` to ``import optimlab as optim``.
"""

# from . import lr_scheduler, swa_utils
from ._dispatch import BackendChoice
from .adam import Adam, AdamW
from .optimizer import Optimizer

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "BackendChoice",
    "Optimizer",
    "lr_scheduler",
    "swa_utils",
]
