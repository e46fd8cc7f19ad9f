"""The optimizer test database: one table drives parity, state_dict, error and backend tests.

Each entry pairs an optimlab optimizer with torch's: the configurations worth
testing (all of torch's own ``OptimizerInfo`` CPU configurations from
``torch.testing._internal.common_optimizers.optim_db``, plus ours below), the
problem it is tested on, and its error inputs (torch's, plus scenarios in which
torch itself is the oracle for the exception type and message).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.testing._internal.common_optimizers import optim_db

import optimlab

ALL_NAMES = (
    "SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam",
    "RAdam", "RMSprop", "Rprop", "SparseAdam", "LBFGS", "Adafactor", "Muon",
)


# ---- problems: params and a loss whose gradients change as the params move ---------------
def _shapes(kind: str):
    if kind == "matrix":  # Muon: 2-D params only
        return [(4, 3), (3, 5), (6, 2)]
    if kind == "sparse":  # embedding tables with sparse grads
        return [(6, 3), (5, 4)]
    return [(4, 3), (5,), (2, 3, 2), ()]


def make_params(kind: str, dtype: torch.dtype, complex_param: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in _shapes(kind)]
    if complex_param:
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        params.append(torch.randn(3, 2, generator=gen, dtype=cdtype))
    return [torch.nn.Parameter(p) for p in params]


_SPARSE_INDEX = torch.tensor([0, 2, 2, 3])


def loss_fn(kind: str, params) -> torch.Tensor:
    total = 0.0
    for i, p in enumerate(params):
        if kind == "sparse":
            x = F.embedding(_SPARSE_INDEX % p.shape[0], p, sparse=True)
        else:
            x = torch.view_as_real(p) if p.is_complex() else p
        total = total + ((i + 1) * 0.7 * x).sin().sum() + 0.3 * (x * x).sum()
    return total


@dataclass
class Config:
    desc: str
    kwargs: dict
    complex_param: bool = False
    problem: str | None = None  # overrides the spec's problem kind


@dataclass
class OptimSpec:
    name: str
    info: object  # torch's OptimizerInfo
    problem: str = "dense"
    steps: int = 5
    extra: list[Config] = field(default_factory=list)

    @property
    def torch_cls(self):
        return getattr(torch.optim, self.name)

    @property
    def ours_cls(self):
        return getattr(optimlab, self.name)

    @property
    def has_foreach_flag(self) -> bool:
        return "foreach" in self.info.supported_impls

    def configs(self, dtype: torch.dtype) -> list[Config]:
        torch_cfgs = [
            Config(f"torch:{oi.desc}", dict(oi.kwargs))
            for oi in self.info.optim_inputs_func(device="cpu", dtype=dtype)
        ]
        complex_ok = self.info.supports_complex and self.problem == "dense"
        ours = [c for c in self.extra if complex_ok or not c.complex_param]
        if complex_ok:
            ours.append(Config("complex params", {}, complex_param=True))
        return torch_cfgs + ours


# ---- configurations torch's CPU database leaves out -----------------------------------------
T = torch.tensor
EXTRA: dict[str, list[Config]] = {
    "Adam": [
        Config("amsgrad, maximize, weight_decay", dict(amsgrad=True, maximize=True, weight_decay=0.1)),
        Config("decoupled, amsgrad", dict(decoupled_weight_decay=True, weight_decay=0.1, amsgrad=True)),
        Config("Tensor lr", dict(lr=T(0.01))),
        Config("Tensor betas", dict(betas=(T(0.8), T(0.9)))),
        Config("amsgrad complex", dict(amsgrad=True, weight_decay=0.1), complex_param=True),
    ],
    "AdamW": [
        Config("amsgrad, maximize", dict(amsgrad=True, maximize=True)),
        Config("Tensor lr", dict(lr=T(0.01), weight_decay=0.2)),
    ],
}

# Each tests/extra_<family>.py adds {name: [Config, ...]} for its optimizers.
for _path in sorted(Path(__file__).parent.glob("extra_*.py")):
    _spec = importlib.util.spec_from_file_location(_path.stem, _path)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    for _name, _configs in _mod.EXTRA.items():
        EXTRA.setdefault(_name, []).extend(_configs)

_PROBLEM = {"Muon": "matrix", "SparseAdam": "sparse"}
_STEPS = {"LBFGS": 3, "RAdam": 8}  # RAdam rectifies from step 6 on

SPECS: dict[str, OptimSpec] = {
    info.name: OptimSpec(
        info.name,
        info,
        problem=_PROBLEM.get(info.name, "dense"),
        steps=_STEPS.get(info.name, 5),
        extra=EXTRA.get(info.name, []),
    )
    for info in optim_db
    if info.name in ALL_NAMES
}


def implemented() -> list[OptimSpec]:
    """Specs whose optimizer optimlab exports (all 15 once complete; see test_exports)."""
    return [s for n, s in SPECS.items() if hasattr(optimlab, n)]


def backends(spec: OptimSpec) -> tuple[str, ...]:
    """The optimlab backends of ``spec`` that can run here (CI installs Triton and a compiler,
    so all of them run there)."""
    alg = spec.ours_cls.algorithm
    return tuple(b for b in optimlab._dispatch.backends_of(alg) if optimlab._dispatch._unavailable(alg, b) is None)


def flags_for(spec: OptimSpec, backend: str) -> dict:
    """Constructor flags that select ``backend`` on torch (and on optimlab)."""
    if not spec.has_foreach_flag:
        return {}
    return {"foreach": backend == "foreach"}
