"""``python -m optimlab.selfcheck``: every backend on this device against the for-loop reference.

Runs each optimizer on each backend available on the device (``foreach``, ``cpp``,
``triton``; Triton interpreted on the CPU) next to the for-loop reference on the same
problem, for a few steps, and compares params and every state entry:

* float32, bfloat16, float16, float64 (``--quick``: float32 and bfloat16);
* the default options and the main flags (weight decay, maximize, amsgrad, momentum,
  nesterov, centered, ...; ``--quick``: the default only);
* params of several shapes, among them a view at an odd storage offset (unaligned); on
  CUDA also params whose sizes are whole 16-byte vectors (the kernels' 128-bit loads);
* a ``torch.amp.GradScaler`` run with an overflowing step that must be skipped (float32);
* on CUDA, a ``capturable=True`` step captured in a CUDA graph and replayed.

It prints one row per case and a one-line verdict, and exits 0 only if every case
passed. It is what to run first on a new machine, before trusting a measured default
(``python -m optimlab.bench --update-defaults``). For example

    python -m optimlab.selfcheck                        # every check; on CUDA if there is a GPU
    python -m optimlab.selfcheck --device cpu --quick   # float32 and bfloat16, default options
    python -m optimlab.selfcheck --optimizers Adam,SGD --backends cpp

``--help`` lists the options. ``run_checks()`` runs the same checks from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import torch

#: Tolerances against the for-loop reference. A fused backend rounds once in float32
#: where the for-loop rounds after each op, and its sqrt is correctly rounded where
#: torch's vectorized CPU sqrt may be 1 ulp off (amplified by centered RMSprop).
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=5e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-2, atol=1e-3),
    torch.bfloat16: dict(rtol=5e-2, atol=1e-2),
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
QUICK_DTYPES = (torch.float32, torch.bfloat16)

# name -> option sets (the first is the one --quick runs)
CONFIGS: dict[str, list[dict]] = {
    "Adam": [{}, dict(weight_decay=0.1, amsgrad=True, maximize=True), dict(betas=(0.8, 0.9), eps=1e-6)],
    "AdamW": [{}, dict(amsgrad=True, weight_decay=0.3)],
    "Adagrad": [{}, dict(weight_decay=0.1, lr_decay=0.01, maximize=True)],
    "Adadelta": [{}, dict(weight_decay=0.1, rho=0.8, maximize=True)],
    "Adamax": [{}, dict(weight_decay=0.1, maximize=True)],
    "ASGD": [{}, dict(weight_decay=0.1, lambd=0.01, t0=2, maximize=True)],
    "NAdam": [{}, dict(weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=0.01)],
    "RAdam": [{}, dict(weight_decay=0.1, decoupled_weight_decay=True)],
    "RMSprop": [{}, dict(weight_decay=0.1, momentum=0.9, centered=True, maximize=True)],
    "Rprop": [{}, dict(etas=(0.4, 1.3), step_sizes=(1e-4, 1.0), maximize=True)],
    "SGD": [dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
            dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True)],
    "Adafactor": [{}, dict(weight_decay=0.1, maximize=True)],
    "Muon": [{}, dict(weight_decay=0.1, nesterov=False)],
    "SparseAdam": [{}, dict(betas=(0.8, 0.9))],
}
STEPS = {"RAdam": 7}  # RAdam rectifies from step 6 on
CAPTURABLE = ("Adam", "AdamW", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam", "RMSprop", "Rprop")


@dataclass
class Result:
    """One check: an optimizer on a backend, a dtype and a case, and its outcome."""

    optimizer: str
    backend: str
    dtype: str
    case: str
    status: str  # "ok", "FAIL", "skip"
    detail: str = ""


# ---- problems ---------------------------------------------------------------------------
def _make_params(name: str, dtype: torch.dtype, device: str, seed: int = 0,
                 aligned: bool = False) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    if name == "Muon":
        tensors = [rand(8, 5), rand(3, 6)]
    elif name == "SparseAdam":
        tensors = [rand(6, 3), rand(5, 4)]
    elif aligned:  # every numel a multiple of 8: the launch may use 128-bit loads; one
        # tensor spans several chunks (BLOCK * ITERS elements)
        tensors = [rand(64, 40), rand(8), rand(1000, 8), rand(16, 3, 2)]
    else:
        # a view at an odd storage offset: its data is not aligned to a vector width
        odd = rand(3 * 7 + 3)[3:].view(3, 7)
        tensors = [rand(4, 3), rand(5), rand(2, 3, 2), rand(()), odd]
    params = []
    for t in tensors:
        t = t.to(device)
        if t.storage_offset():  # keep the odd offset on the device too
            base = torch.zeros(t.numel() + 3, dtype=dtype, device=device)
            base[3:].copy_(t.flatten())
            t = base[3:].view(t.shape)
        params.append(torch.nn.Parameter(t))
    return params


_INDEX = torch.tensor([0, 2, 2, 3])

#: the case whose params all have numels of whole 16-byte vectors (the others include odd
#: sizes and an unaligned view, so their launches use scalar loads)
ALIGNED_CASE = "aligned sizes (128-bit loads)"


def _loss(name: str, params) -> torch.Tensor:
    total = 0.0
    for i, p in enumerate(params):
        if name == "SparseAdam":
            x = torch.nn.functional.embedding(_INDEX.to(p.device) % p.shape[0], p, sparse=True)
        else:
            x = p
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        total = total + ((i + 1) * 0.7 * x).sin().sum() + 0.3 * (x * x).sum()
    return total


def _reference(name: str, backend: str) -> str:
    """The backend whose numbers ``backend`` must give: torch.optim's foreach for foreach
    (it differs from torch's for-loop, e.g. ASGD's step size is computed in float32),
    the for-loop for everything else."""
    return "torch-foreach" if backend == "foreach" and name in TORCH_FOREACH else "forloop"


# torch.optim's optimizers with a foreach implementation
TORCH_FOREACH = ("Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "ASGD", "NAdam", "RAdam",
                 "RMSprop", "Rprop", "SGD")


@contextlib.contextmanager
def _backend(name: str) -> Iterator[None]:
    from ._dispatch import ENV_VAR

    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old


def _make_opt(name, params, kwargs, backend=None):
    if backend == "torch-foreach":
        return getattr(torch.optim, name)(params, **kwargs, foreach=True)
    import optimlab

    return getattr(optimlab, name)(params, **kwargs)


def _run(name, backend, dtype, device, kwargs, steps, overflow_at=None, in_kernel=False, aligned=False):
    """Train ``steps`` steps on ``backend``; return (params, state_dict, backend that ran).
    With ``overflow_at``, a GradScaler drives the steps; ``in_kernel``: the fused kernel
    unscales and skips (what ``fused=True`` turns on), else the scaler does. ``aligned``:
    the params of :data:`ALIGNED_CASE`."""
    params = _make_params(name, dtype, device, aligned=aligned)
    with _backend("forloop" if backend == "torch-foreach" else backend):
        opt = _make_opt(name, params, kwargs, backend)
        ran = opt.backends()[0].name if hasattr(opt, "backends") else backend
        if in_kernel:
            opt._step_supports_amp_scaling = True
        scaler = torch.amp.GradScaler(device, init_scale=2.0**8) if overflow_at is not None else None
        for k in range(steps):
            opt.zero_grad()
            loss = _loss(name, params)
            if scaler is None:
                loss.backward()
                opt.step()
                continue
            scaler.scale(loss).backward()
            if k == overflow_at:
                params[0].grad.view(-1)[0] = math.inf  # this step must be skipped
            scaler.step(opt)
            scaler.update()
    return [p.detach().clone() for p in params], opt.state_dict(), ran


def _compare(ours, ref, dtype, name="") -> str | None:
    """None if params and every state entry agree, else a description of the first difference."""
    tol = TOL[dtype]
    if name == "Muon" and dtype in (torch.float16, torch.bfloat16):
        # Newton-Schulz (five polynomial steps on bfloat16 matrices) amplifies an ulp of
        # difference in its input to several percent of the update: gross errors only
        tol = dict(rtol=0.25, atol=tol["atol"])
    for i, (a, b) in enumerate(zip(ours[0], ref[0])):
        why = _differ(a, b, tol)
        if why:
            return f"param {i}: {why}"
    so, sr = ours[1]["state"], ref[1]["state"]
    if so.keys() != sr.keys():
        return f"state for params {sorted(so)} vs {sorted(sr)}"
    for pid in sr:
        if so[pid].keys() != sr[pid].keys():
            return f"param {pid} state keys {list(so[pid])} vs {list(sr[pid])}"
        for key, b in sr[pid].items():
            a = so[pid][key]
            if torch.is_tensor(b):
                why = _differ(a, b, tol if b.is_floating_point() else dict(rtol=0, atol=0))
                if why:
                    return f"param {pid} state {key!r}: {why}"
    return None


def _differ(a, b, tol) -> str | None:
    if not torch.is_tensor(a) or a.dtype != b.dtype or a.shape != b.shape:
        return f"{getattr(a, 'dtype', type(a))}{tuple(getattr(a, 'shape', ()))} vs {b.dtype}{tuple(b.shape)}"
    low_precision = b.dtype in (torch.float16, torch.bfloat16)
    a, b = a.to_dense().cpu().double(), b.to_dense().cpu().double()
    if low_precision and b.numel():
        # rounding in 8 or 11 bits differs with the order of ops (torch's own foreach and
        # for-loop differ by an ulp of the tensor's largest values where terms cancel):
        # judge the error against the tensor's scale, not each element's
        tol = dict(tol, atol=max(tol["atol"], tol["rtol"] * b.abs().nan_to_num(posinf=0, neginf=0).max().item()))
    bad = ~torch.isclose(a, b, equal_nan=True, **tol)
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        return f"{a.flatten()[i].item():.9g} vs {b.flatten()[i].item():.9g} (element {i})"
    return None


def _check(name, backend, dtype, device, kwargs, case, overflow_at=None, in_kernel=False) -> Result:
    dname = str(dtype).removeprefix("torch.")
    steps = STEPS.get(name, 4)
    aligned = case == ALIGNED_CASE
    try:
        ref = _run(name, _reference(name, backend), dtype, device, kwargs, steps, overflow_at,
                   aligned=aligned)
    except Exception as e:  # noqa: BLE001 - the reference cannot take this case: not ours to judge
        return Result(name, backend, dname, case, "skip", f"for-loop raises {type(e).__name__}: {e}")
    try:
        ours = _run(name, backend, dtype, device, kwargs, steps, overflow_at, in_kernel, aligned)
    except Exception as e:  # noqa: BLE001 - a backend that raises where the reference runs fails
        return Result(name, backend, dname, case, "FAIL", f"{type(e).__name__}: {e}")
    if ours[2] != backend:
        return Result(name, backend, dname, case, "skip", f"{ours[2]} ran instead")
    why = _compare(ours, ref, dtype, name)
    return Result(name, backend, dname, case, "FAIL" if why else "ok", why or "")


def _check_graph_capture(name, backend, device) -> Result:
    """CUDA only: ``capturable=True`` steps captured in a CUDA graph and replayed equal eager steps."""
    dtype, steps = torch.float32, STEPS.get(name, 4)
    case = "cuda graph capture"
    try:
        ref = _run(name, "forloop", dtype, device, {}, steps)
        params = _make_params(name, dtype, device)
        for p in params:
            p.grad = torch.zeros_like(p)
        with _backend(backend):
            opt = _make_opt(name, params, dict(capturable=True))
            if opt.backends()[0].name != backend:
                return Result(name, backend, "float32", case, "skip", f"{opt.backends()[0].name} ran instead")

            def fill_grads():
                grads = torch.autograd.grad(_loss(name, params), params)
                for p, g in zip(params, grads):
                    p.grad.copy_(g)

            fill_grads()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up step (creates state, compiles kernels)
                opt.step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                opt.step()
            for _ in range(steps - 1):
                fill_grads()
                graph.replay()
            torch.cuda.synchronize()
        ours = ([p.detach().clone() for p in params], opt.state_dict(), backend)
    except Exception as e:  # noqa: BLE001
        return Result(name, backend, "float32", case, "FAIL", f"{type(e).__name__}: {e}")
    why = _compare(ours, ref, dtype)
    return Result(name, backend, "float32", case, "FAIL" if why else "ok", why or "")


def _backends_here(name: str, device: str, wanted: list[str] | None) -> list[str]:
    import optimlab
    from . import _dispatch

    alg = getattr(optimlab, name).algorithm
    names = [b for b in _dispatch.backends_of(alg) if b != "forloop"]
    if device == "cuda":
        names = [b for b in names if b != "cpp"]
    if wanted:
        names = [b for b in names if b in wanted]
    return [b for b in names if _dispatch._unavailable(alg, b) is None]


def run_checks(device: str = "cpu", quick: bool = False, optimizers: list[str] | None = None,
               backends: list[str] | None = None, progress=None) -> list[Result]:
    """Run every check for ``device`` and return the results.

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        quick: float32 and bfloat16 only, default options only.
        optimizers: class names to check (default: all).
        backends: backends to check (default: every one available on ``device``).
        progress (Callable[[Result], None] | None): called with each ``Result`` as soon
            as it is known.

    Returns:
        One ``Result`` per check.
    """
    results = []
    from . import _dispatch

    dtypes = QUICK_DTYPES if quick else DTYPES
    for name in optimizers or list(CONFIGS):
        configs = CONFIGS[name][:1] if quick else CONFIGS[name]
        for backend in _backends_here(name, device, backends):
            cases = [(dtype, kw, "default" if not kw else ", ".join(f"{k}={v}" for k, v in kw.items()),
                      None, False) for kw in configs for dtype in dtypes]
            if device == "cuda" and name not in ("Muon", "SparseAdam"):  # the vector path
                # of compiled elementwise kernels (the interpreter has no vectors)
                cases += [(dtype, configs[0], ALIGNED_CASE, None, False) for dtype in QUICK_DTYPES]
            if name != "SparseAdam":  # GradScaler unscales dense grads only
                cases.append((torch.float32, configs[0], "GradScaler, overflow at step 2", 1, False))
                if backend in _dispatch.FUSED_BACKENDS:
                    cases.append((torch.float32, configs[0], "GradScaler in kernel, overflow at step 2", 1, True))
            for dtype, kw, case, overflow_at, in_kernel in cases:
                results.append(_check(name, backend, dtype, device, kw, case, overflow_at, in_kernel))
                if progress:
                    progress(results[-1])
            if device == "cuda" and name in CAPTURABLE:
                results.append(_check_graph_capture(name, backend, device))
                if progress:
                    progress(results[-1])
    return results


def verdict(results: list[Result], device: str) -> str:
    """The one-line summary: PASS if no check failed and at least one passed."""
    n = {s: sum(r.status == s for r in results) for s in ("ok", "FAIL", "skip")}
    state = "PASS" if n["FAIL"] == 0 and n["ok"] > 0 else "FAIL"
    return (f"optimlab selfcheck on {device}: {state} ({n['ok']} passed, {n['FAIL']} failed, "
            f"{n['skip']} skipped)")


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    """The command line: print the table and the verdict; 0 on PASS, else 1."""
    ap = argparse.ArgumentParser(prog="python -m optimlab.selfcheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="float32 and bfloat16, default options only")
    ap.add_argument("--optimizers", help="comma-separated names (default: all with a fused or foreach backend)")
    ap.add_argument("--backends", help="comma-separated backends to check (default: all available)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    optimizers = args.optimizers.split(",") if args.optimizers else None
    unknown = [n for n in optimizers or [] if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown optimizers {unknown}; valid: {', '.join(CONFIGS)}")
    if args.device == "cpu" and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton's kernels run interpreted on CPU tensors
    print(f"optimlab selfcheck: {args.device} ({_device_name(args.device)}), torch {torch.__version__}, "
          f"{'quick' if args.quick else 'full'}", flush=True)
    fmt = "{:<11} {:<8} {:<9} {:<44} {:<5} {}"
    print(fmt.format("optimizer", "backend", "dtype", "case", "", "detail"))
    start = time.perf_counter()

    def show(r: Result) -> None:
        print(fmt.format(r.optimizer, r.backend, r.dtype, r.case[:44], r.status, r.detail[:160]), flush=True)

    results = run_checks(args.device, args.quick, optimizers,
                         args.backends.split(",") if args.backends else None, progress=show)
    line = verdict(results, args.device)
    print(f"{line} in {time.perf_counter() - start:.0f} s")
    return 0 if line.split(": ", 1)[1].startswith("PASS") else 1


if __name__ == "__main__":
    raise SystemExit(main())
