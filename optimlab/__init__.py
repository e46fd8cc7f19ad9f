"""optimlab: a drop-in replacement for ``torch.optim`` with faster backends.

Change ``import torch.optim as optim`` to ``import optimlab as optim``.
"""

from . import lr_scheduler, swa_utils
from ._dispatch import BackendChoice
from .adam import Adam, AdamW
from .optimizer import Optimizer

from .adadelta import Adadelta
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adamax import Adamax
from .asgd import ASGD
from .lbfgs import LBFGS
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .rprop import Rprop
from .sgd import SGD
from .sparse_adam import SparseAdam
from .grad_release import GradientRelease, gradient_release

# torch's own helper, re-exported: it swaps params and state and works on any Optimizer
try:
    from torch.optim import swap_in_optimizer_params_and_state
except ImportError:  # torch < 2.13 has no such helper
    pass

from .kernels import cpu as _cpp_backend  # noqa: F401  registers "cpp" (builds on first use)
from .kernels import triton as _triton_backend  # noqa: F401  registers "triton" (imports no triton)

__version__ = next((d.version for d in __import__("importlib.metadata").metadata.distributions(name="optimlab")), "0+unknown")

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "BackendChoice",
    "GradientRelease",
    "LBFGS",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
    "SparseAdam",
    "gradient_release",
    "lr_scheduler",
    "swa_utils",
]
if "swap_in_optimizer_params_and_state" in globals():
    __all__.append("swap_in_optimizer_params_and_state")
