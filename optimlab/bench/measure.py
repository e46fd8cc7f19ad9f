"""Timing one optimizer step: median time, bytes moved, GB/s and % of copy bandwidth."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

import optimlab
from optimlab import _dispatch

OURS = ("forloop", "foreach", "triton", "cpp")
THEIRS = ("forloop", "foreach", "fused", "compile")
BACKENDS = ("optimlab-default",) + tuple(f"optimlab-{b}" for b in OURS) + tuple(f"torch-{b}" for b in THEIRS)
# LBFGS needs a closure and re-evaluates the loss: not an elementwise step to time.
OPTIMIZERS = tuple(
    n for n in ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam",
                "RMSprop", "Rprop", "Adafactor", "Muon", "SparseAdam")
    if hasattr(optimlab, n)
)


@dataclass
class Row:
    optimizer: str
    backend: str
    preset: str
    dtype: str
    device: str
    params: int
    tensors: int
    median_ms: float | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    state_mb: float | None = None
    status: str = "ok"

    def as_dict(self) -> dict:
        return asdict(self)


class Timer:
    """perf_counter on the CPU; CUDA events (and a sync per step) on the GPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], None], warmup: int, iters: int) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, iters: int = 10) -> float:
    """Measured device copy bandwidth in GB/s (read + write bytes over the median time)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = Timer(device)(lambda: dst.copy_(src), warmup=3, iters=iters)
    return 2 * nbytes / seconds / 1e9


def _state_tensors(opt) -> list[torch.Tensor]:
    return [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]


def bytes_per_step(params, opt) -> int:
    """Bytes an ideal fused step moves: read+write params and state, read grads."""
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grads = [p.grad._values() if p.grad.is_sparse else p.grad for p in params]
    grad_bytes = sum(g.numel() * g.element_size() for g in grads)
    state_bytes = sum(t.numel() * t.element_size() for t in _state_tensors(opt))
    return 2 * param_bytes + grad_bytes + 2 * state_bytes


@contextlib.contextmanager
def backend_env(name: str | None):
    old = os.environ.get("OPTIMLAB_BACKEND")
    if name is None:
        os.environ.pop("OPTIMLAB_BACKEND", None)
    else:
        os.environ["OPTIMLAB_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OPTIMLAB_BACKEND", None)
        else:
            os.environ["OPTIMLAB_BACKEND"] = old


def make_params(shapes, dtype, device, optimizer: str, seed: int = 0):
    if optimizer == "Muon":  # Muon only takes 2-D params
        shapes = [s for s in shapes if len(s) == 2] or [(s[0] // 64 or 1, 64) for s in shapes]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype))
        p.grad = torch.randn(s, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype) * 1e-2
        if optimizer == "SparseAdam":  # sparse grads touching every 8th row
            p.grad = (p.grad * (torch.arange(s[0], device=device) % 8 == 0).view(-1, *[1] * (len(s) - 1))).to_sparse()
        params.append(p)
    return params


# Options most training runs use, applied to every backend alike (SGD without momentum
# is a bare axpy and would not represent SGD users).
TYPICAL = {"SGD": {"momentum": 0.9}}


def build(optimizer: str, backend: str, params):
    """(optimizer, env override) for a backend label, or raise."""
    lib, _, impl = backend.partition("-")
    options = TYPICAL.get(optimizer, {})
    if options:
        params = [{"params": params, **options}]
    if lib == "optimlab":
        cls = getattr(optimlab, optimizer)
        if impl in ("forloop", "foreach") and "foreach" in _signature(cls):
            return cls(params, foreach=impl == "foreach"), None
        return cls(params), (None if impl == "default" else impl)
    cls = getattr(torch.optim, optimizer)
    sig = _signature(cls)
    if impl == "fused":
        if "fused" not in sig:
            raise RuntimeError(f"torch has no fused {optimizer}")
        return cls(params, fused=True), None
    if impl in ("forloop", "foreach"):
        if "foreach" not in sig:
            if impl == "foreach":
                raise RuntimeError(f"torch has no foreach {optimizer}")
            return cls(params), None
        return cls(params, foreach=impl == "foreach"), None
    return cls(params), None  # compile: torch's default step, compiled below


def _signature(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def measure(optimizer: str, backend: str, shapes, preset: str, dtype: torch.dtype,
            device: torch.device, copy_gbps: float, warmup: int, iters: int) -> Row:
    from .presets import numel

    row = Row(optimizer, backend, preset, str(dtype).removeprefix("torch."), str(device), numel(shapes), len(shapes))
    try:
        params = make_params(shapes, dtype, device, optimizer)
        row.params, row.tensors = sum(p.numel() for p in params), len(params)
        wanted = backend.removeprefix("optimlab-")
        if backend.startswith("optimlab-") and wanted != "default":
            why = _dispatch._unavailable(getattr(optimlab, optimizer).algorithm, wanted)
            if why is not None:
                raise RuntimeError(why)
        opt, env = build(optimizer, backend, params)
        with backend_env(env):
            if backend.startswith("optimlab"):
                chosen = opt.backends()[0]
                if wanted != "default" and chosen.name != wanted:
                    raise RuntimeError(f"{wanted} unavailable ({chosen.reason})")
                if wanted == "default":
                    row.backend = f"optimlab-default({chosen.name})"
            step = opt.step
            if backend == "torch-compile":
                step = torch.compile(opt.step)
            seconds = Timer(device)(step, warmup=warmup, iters=iters)
    except Exception as e:  # noqa: BLE001 - an unavailable backend is a table row, not a crash
        row.status = f"skipped: {str(e).splitlines()[0][:100]}"
        return row
    moved = bytes_per_step(params, opt)
    row.median_ms = seconds * 1e3
    row.gbps = moved / seconds / 1e9
    row.pct_copy = 100 * row.gbps / copy_gbps
    row.state_mb = sum(t.numel() * t.element_size() for t in _state_tensors(opt)) / 2**20
    return row
