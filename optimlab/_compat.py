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
    "assume_constant_result",
    "disable_dynamo",
    "graph_break",
    "required",
    "tracing",
]


def graph_break() -> None:
    """``torch._dynamo.graph_break()``, importing dynamo on first use (as torch.optim does)."""
    import torch._dynamo

    torch._dynamo.graph_break()


#: ``torch.compiler.disable`` that imports dynamo on the first call, not when decorating
#: (torch.optim decorates its own functions with it)
disable_dynamo: Callable[[Callable], Callable] = torch._disable_dynamo


def assume_constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result(fn)`` without importing dynamo when decorating:
    when dynamo traces a call of ``fn`` it runs ``fn`` eagerly instead, and uses the result
    as a constant (with no guard on what ``fn`` read); called normally, ``fn`` is unchanged.
    For decisions made once per process (a backend's availability, the measured defaults)."""
    fn._dynamo_marked_constant = True  # what torch._dynamo.assume_constant_result sets
    return fn


_is_compiling = torch.compiler.is_compiling
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active


def tracing() -> bool:
    """True where torch ops are recorded or transformed rather than only run: dynamo is
    tracing (``torch.compile``, ``torch.export``), a ``TorchDispatchMode`` is active
    (``make_fx``, ``FakeTensorMode``, AOTAutograd, ``FlopCounterMode``...) or a functorch
    transform is (``vmap``, ``grad``, ``functionalize``). Plain eager code gets False.
    (Bound names: this runs on every fused step; dynamo folds ``is_compiling`` to True.)"""
    return _is_compiling() or _dispatch_modes() > 0 or _functorch_active()
