"""Timing optimizer steps: median and spread of the step time, bytes moved, GB/s, % of copy bandwidth.

How a figure is taken (one *cell* = one optimizer on one preset and dtype):

* every backend ("variant") of the cell is built and warmed up first; then the variants
  *take turns*, in an order rotated every round, so that a burst of load from elsewhere
  on the machine hits them alike, until each has at least ``rounds`` samples (GPU: turns),
  ``min_time`` seconds (CPU) and ``iters`` steps timed;
* CPU: a turn is one ``torch.utils.benchmark.Timer.timeit(number)``: its own untimed
  warm-up steps re-warm the caches after the other variants ran, then ``number`` steps,
  about ``CPU_BLOCK_S`` seconds of them, give one sample (their mean); a step longer than
  that is timed alone after one warm-up step (``Timer.blocked_autorange``), and a step of
  ``SLOW_STEP_S`` or more takes half of its ``rounds`` samples per turn. Short blocks
  keep a stall (another process taking the CPU for some ms) to a few samples, which the
  median then ignores, instead of spreading it over every sample;
* GPU: ``rounds`` turns of ``triton.testing.do_bench`` over ``min_time / rounds`` seconds
  each (it flushes the L2 cache before every step; each step is one sample), or CUDA
  events with the same flush where Triton is absent;
* a row reports the median over all samples and the spread: quartiles, IQR as % of the
  median, and the number of samples. ``NOISY_IQR_PCT`` flags noisy rows.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Iterable

import torch

import optimlab
from optimlab import _dispatch
from optimlab._measured import _bucket

OURS = ("forloop", "foreach", "triton", "cpp")
THEIRS = ("forloop", "foreach", "fused", "compile")
BACKENDS = ("optimlab-default",) + tuple(f"optimlab-{b}" for b in OURS) + tuple(f"torch-{b}" for b in THEIRS)
# LBFGS needs a closure and re-evaluates the loss: not an elementwise step to time.
OPTIMIZERS = tuple(
    n for n in ("SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam",
                "RMSprop", "Rprop", "Adafactor", "Muon", "SparseAdam")
    if hasattr(optimlab, n)
)
NOISY_IQR_PCT = 10.0  # a row whose interquartile range exceeds this % of its median is flagged


def size_class(tensors: int, params: int) -> str:
    """The size class of a param group: ``t{i}-n{j}`` with ``i``, ``j`` the powers-of-8
    buckets of its tensor count and of its mean tensor size (``8**i <= tensors < 8**(i+1)``,
    ``8**j <= params // tensors < 8**(j+1)``)."""
    tensors = max(1, tensors)
    return f"t{_bucket(tensors)}-n{_bucket(params // tensors)}"




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
    q1_ms: float | None = None  # first and third quartile of the samples
    q3_ms: float | None = None
    iqr_pct: float | None = None  # (q3 - q1) / median, in %
    samples: int = 0
    min_ms: float | None = None
    size_class: str = ""

    def __post_init__(self):
        if not self.size_class:
            self.size_class = size_class(self.tensors, self.params)

    @property
    def noisy(self) -> bool:
        return self.iqr_pct is not None and self.iqr_pct > NOISY_IQR_PCT

    def as_dict(self) -> dict:
        return asdict(self)


ROW_FIELDS = tuple(f.name for f in fields(Row))


def spread(samples: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of the samples."""
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, med, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return q1, med, q3


# ---- samplers ---------------------------------------------------------------------------
CPU_BLOCK_S = 2e-3  # the length of one CPU sample
SLOW_STEP_S = 10e-3  # steps this long take half of their samples per turn, after one warm-up step


def _timer(fn: Callable[[], object]):
    from torch.utils.benchmark import Timer

    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())


def _cpu_block(timer, number: int, samples: int = 1, typical: float = 0.0) -> list[float]:
    """Seconds per step: one sample, the mean of ``number`` steps after ``Timer.timeit``'s own
    warm-up; or, when a step is long (``number == 1``), ``samples`` single steps after one
    warm-up step (``Timer.blocked_autorange``'s block-size estimate stops at one step)."""
    if number > 1:
        return [timer.timeit(number).median]
    return list(timer.blocked_autorange(min_run_time=(samples - 0.5) * typical).times)


def _gpu_turn(fn: Callable[[], object], seconds: float) -> list[float]:
    """Seconds of each step of one GPU turn, the L2 cache flushed before every step."""
    try:
        from triton.testing import do_bench
    except ImportError:  # no Triton: CUDA events, flushing L2 as do_bench does
        return _cuda_events_turn(fn, seconds)
    return [t / 1e3 for t in do_bench(fn, warmup=0, rep=max(seconds * 1e3, 1e-3), return_mode="all")]


_FLUSH: list[torch.Tensor] = []


def _cuda_events_turn(fn: Callable[[], object], seconds: float) -> list[float]:
    if not _FLUSH:
        _FLUSH.append(torch.empty(256 << 20, dtype=torch.int8, device="cuda"))
    flush = _FLUSH[0]
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    n = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, samples: int = 7) -> float:
    """Measured device copy bandwidth in GB/s (read + write bytes over the median time)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)

    if device.type == "cuda":
        copy()
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        copy()
        torch.cuda.synchronize(device)
        times = _gpu_turn(copy, samples * (time.perf_counter() - t0))
    else:
        copy()
        t0 = time.perf_counter()
        copy()
        times = _cpu_block(_timer(copy), 1, samples, time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times) / 1e9


# ---- building the optimizers --------------------------------------------------------------
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
    return set(inspect.signature(cls.__init__).parameters)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _Variant:
    row: Row
    params: list
    opt: object
    step: Callable[[], object]
    env: str | None  # OPTIMLAB_BACKEND during its turns (None: unset)
    estimate: float  # seconds of the fastest warm-up step
    samples: list = field(default_factory=list)  # seconds per step
    timed_s: float = 0.0  # seconds of timed steps
    steps: int = 0  # timed steps
    turns: int = 0
    timer: object = None

    def wants_more(self, device: torch.device, rounds: int, min_time: float, iters: int) -> bool:
        if self.steps < iters:
            return True
        if device.type == "cuda":  # each turn lasts min_time / rounds (do_bench's rep), flushes included
            return self.turns < rounds
        return len(self.samples) < rounds or self.timed_s < min_time

    def take_turn(self, device: torch.device, rounds: int, min_time: float) -> None:
        self.turns += 1
        with backend_env(self.env):
            if device.type == "cuda":
                times = _gpu_turn(self.step, min_time / rounds)
                self.samples += times
                self.timed_s += sum(times)
                self.steps += len(times)
                return
            if self.timer is None:
                self.timer = _timer(self.step)
            typical = max(statistics.median(self.samples) if self.samples else self.estimate, 1e-9)
            number = max(1, round(CPU_BLOCK_S / typical))
            times = _cpu_block(self.timer, number, -(-rounds // 2) if typical >= SLOW_STEP_S else 1, typical)
            self.samples += times
            self.timed_s += sum(times) * number
            self.steps += number * len(times)


def _prepare(optimizer, backend, shapes, preset, dtype, device, warmup) -> _Variant | Row:
    """A built and warmed-up variant, or its row marked skipped."""
    from .presets import numel

    row = Row(optimizer, backend, preset, str(dtype).removeprefix("torch."), str(device), numel(shapes), len(shapes))
    try:
        params = make_params(shapes, dtype, device, optimizer)
        row.params, row.tensors = sum(p.numel() for p in params), len(params)
        row.size_class = size_class(row.tensors, row.params)
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
            step = torch.compile(opt.step) if backend == "torch-compile" else opt.step
            estimate = float("inf")
            for _ in range(max(1, warmup)):  # the first step creates the state (and compiles)
                t0 = time.perf_counter()
                step()
                _sync(device)
                estimate = min(estimate, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - an unavailable backend is a table row, not a crash
        row.status = f"skipped: {str(e).splitlines()[0][:100] if str(e) else type(e).__name__}"
        return row
    return _Variant(row, params, opt, step, env, estimate)


def _finish(v: _Variant, copy_gbps: float) -> Row:
    row = v.row
    if not v.samples:
        row.status = "skipped: no samples"
        return row
    q1, med, q3 = spread(v.samples)
    row.median_ms, row.q1_ms, row.q3_ms = med * 1e3, q1 * 1e3, q3 * 1e3
    row.iqr_pct = 100 * (q3 - q1) / med if med > 0 else 0.0
    row.samples = len(v.samples)
    row.min_ms = min(v.samples) * 1e3
    row.gbps = bytes_per_step(v.params, v.opt) / med / 1e9
    row.pct_copy = 100 * row.gbps / copy_gbps
    row.state_mb = sum(t.numel() * t.element_size() for t in _state_tensors(v.opt)) / 2**20
    return row


def measure_cell(optimizer: str, backends: Iterable[str], shapes, preset: str, dtype: torch.dtype,
                 device: torch.device, copy_gbps: float, *, warmup: int = 3, rounds: int = 10,
                 min_time: float = 1.0, iters: int = 0, max_variants: int | None = None) -> list[Row]:
    """One row per backend for ``optimizer`` on ``shapes``: the variants take turns until each
    has ``rounds`` samples, ``min_time`` seconds and ``iters`` steps timed.

    ``max_variants`` bounds how many variants are alive (and interleaved) at once, for
    presets whose parameters, grads and state would not fit in memory once per backend."""
    backends = list(backends)
    group = len(backends) if not max_variants else max(1, max_variants)
    rows: list[Row] = []
    for start in range(0, len(backends), group):
        built = [_prepare(optimizer, b, shapes, preset, dtype, device, warmup) for b in backends[start:start + group]]
        variants = [v for v in built if isinstance(v, _Variant)]
        r = 0
        while True:
            pending = [v for v in variants if v.wants_more(device, rounds, min_time, iters)]
            if not pending:
                break
            k = r % len(pending)
            for v in pending[k:] + pending[:k]:
                v.take_turn(device, rounds, min_time)
            r += 1
        rows += [_finish(v, copy_gbps) if isinstance(v, _Variant) else v for v in built]
        del built, variants
    return rows


def measure(optimizer: str, backend: str, shapes, preset: str, dtype: torch.dtype,
            device: torch.device, copy_gbps: float, warmup: int = 3, rounds: int = 10,
            min_time: float = 1.0, iters: int = 0) -> Row:
    """One backend alone (no interleaving): see ``measure_cell``."""
    return measure_cell(optimizer, [backend], shapes, preset, dtype, device, copy_gbps,
                        warmup=warmup, rounds=rounds, min_time=min_time, iters=iters)[0]
