"""optimlab: a drop-in replacement for ``torch.optim`` with faster backends.

Change ``import torch.optim as optim`` to ``import optimlab as optim``.
"""

from . import lr_scheduler, swa_utils
from ._dispatch import BackendChoice
from .adam import Adam, AdamW
from .optimizer import Optimizer

# Optimizers being written concurrently; each module's __all__ names its class.
from .adadelta import *  # noqa: F401,F403
from .adafactor import *  # noqa: F401,F403
from .adagrad import *  # noqa: F401,F403
from .adamax import *  # noqa: F401,F403
from .asgd import *  # noqa: F401,F403
from .lbfgs import *  # noqa: F401,F403
from .muon import *  # noqa: F401,F403
from .nadam import *  # noqa: F401,F403
from .radam import *  # noqa: F401,F403
from .rmsprop import *  # noqa: F401,F403
from .rprop import *  # noqa: F401,F403
from .sgd import *  # noqa: F401,F403
from .sparse_adam import *  # noqa: F401,F403

from .kernels import cpu as _cpp_backend  # noqa: F401  registers "cpp" (builds on first use)
from .kernels import triton as _triton_backend  # noqa: F401  registers "triton" (imports no triton)

__version__ = "0.1.0"
