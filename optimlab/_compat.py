"""The one home of torch's private helpers that optimlab uses (present in torch 2.11 .. 2.13).

Everything private from torch is imported here and only here, so a torch release
that moves one breaks one module. Nothing here imports ``torch._dynamo`` (and with
it sympy and triton) at import time: ``import optimlab`` costs what
``import torch.optim`` costs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim.optimizer import (
    _device_dtype_check_for_fused,
    _get_capturable_supported_devices,
    _get_scalar_dtype,
    _get_value,
    _to_scalar,
    required,
)
from torch.utils._foreach_utils import (
    _get_foreach_kernels_supported_devices,
    _get_fused_kernels_supported_devices,
)

__all__ = [
    "_device_dtype_check_for_fused",
    "_get_capturable_supported_devices",
    "_get_foreach_kernels_supported_devices",
    "_get_fused_kernels_supported_devices",
    "_get_scalar_dtype",
    "_get_value",
    "_to_scalar",
    "disable_dynamo",
    "graph_break",
    "required",
]


def graph_break() -> None:
    """``torch._dynamo.graph_break()``, importing dynamo on first use (as torch.optim does)."""
    import torch._dynamo

    torch._dynamo.graph_break()


#: ``torch.compiler.disable`` that imports dynamo on the first call, not when decorating
#: (torch.optim decorates its own functions with it)
disable_dynamo: Callable[[Callable], Callable] = torch._disable_dynamo
