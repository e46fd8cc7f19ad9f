"""The "cpp" backend: fused C++ CPU kernels for every elementwise optimizer.

The kernels (``csrc/``) make one vectorized, multi-threaded pass over memory per
tensor. They only do the elementwise update: every scalar (step sizes, bias
corrections, ...) is computed here, on the host, by the algorithm's own shared
Python function (``adam_scalars``, ``nadam_scalars``, ``radam_scalars``,
``adagrad_clr``, ``adamax_bias_correction``, ``asgd_eta``/``asgd_mu`` (stored as
``asgd_next`` rounds them)), exactly as the for-loop backend computes it.

Building: the extension is compiled on first use with
``torch.utils.cpp_extension.load`` into ``$OPTIMLAB_CACHE_DIR`` (default:
``$TORCH_EXTENSIONS_DIR/optimlab``, else ``$XDG_CACHE_HOME/optimlab`` or
``~/.cache/optimlab``), in a folder named after a hash of the sources, the flags,
torch's and Python's versions and the CPU capability, so later processes just
import it. The instruction set is the highest level torch's CPUID check finds
(AVX512 / AVX2 / DEFAULT; ``OPTIMLAB_CPU_ISA`` overrides, see ``capability``), never
``-march=native``; a cache shared by different machines keeps one build per
instruction set. ``python -m optimlab.kernels`` builds ahead of time.

If no compiler is found or the build fails, the backend reports itself
unavailable with the reason: the default falls back to foreach with one
warning, and an explicit ``fused=True`` or ``OPTIMLAB_BACKEND=cpp`` raises.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import operator
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .. import _dispatch
from ..optimizer import _get_value, _to_scalar

__all__ = ["availability", "build_directory", "load", "capability"]

_CSRC_CANDIDATES = (
    Path(__file__).resolve().parent / "csrc",  # shipped inside the package
    Path(__file__).resolve().parents[2] / "csrc",  # source checkout / editable install
)
_SOURCES = (
    "bindings.cpp", "fused_apply.cpp", "adam.cpp", "sgd.cpp", "adagrad.cpp", "adadelta.cpp",
    "adamax.cpp", "asgd.cpp", "nadam.cpp", "radam.cpp", "rmsprop.cpp", "rprop.cpp",
)
_HEADERS = ("optim_math.h", "fused_apply.h", "kernels.h")

# Instruction-set flags per torch CPU capability (what ATen compiles its own kernels with),
# with the macros that select at::vec's matching Vectorized<T>.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "DEFAULT": [],
}
_FALLBACK_ORDER = ("AVX512", "AVX2", "DEFAULT")

_lock = threading.Lock()
_module: ModuleType | None = None
_unavailable_reason: str | None = None
_checked = False


def csrc_dir() -> Path | None:
    for d in _CSRC_CANDIDATES:
        if all((d / f).is_file() for f in _SOURCES + _HEADERS):
            return d
    return None


def capability() -> str:
    """The instruction set to build for: the highest level of ``_ISA_FLAGS`` this CPU runs,
    by torch's CPUID check (which honours ``ATEN_CPU_CAPABILITY``); ``OPTIMLAB_CPU_ISA``
    (AVX512, AVX2 or DEFAULT) overrides it. (torch runs most of its own elementwise
    kernels as AVX2 code on AVX-512 machines; ``benchmarks/bench_cpu_isa.py`` measures
    both builds of these kernels: on an AMD EPYC they were within noise of each other
    except Rprop, 10-20% faster as AVX2 (benchmarks/results/cpu-epyc-2c-isa.md).)
    """
    machine = _machine_level()
    forced = os.environ.get("OPTIMLAB_CPU_ISA", "").upper()
    if forced:
        if forced not in _ISA_FLAGS:
            raise ValueError(f"OPTIMLAB_CPU_ISA={forced!r}: expected one of {', '.join(_ISA_FLAGS)}")
        if _FALLBACK_ORDER.index(forced) < _FALLBACK_ORDER.index(machine):
            raise ValueError(f"OPTIMLAB_CPU_ISA={forced}: this CPU runs {machine} at most")
        return forced
    return machine


def _machine_level() -> str:
    """The highest instruction set of _ISA_FLAGS this CPU runs, by torch's CPUID check."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return "DEFAULT"
    cap = torch.backends.cpu.get_cpu_capability().upper().replace(" ", "")
    return cap if cap in _ISA_FLAGS else "DEFAULT"


def _flags(cap: str) -> tuple[list[str], list[str]]:
    # -ffp-contract=off: the kernels' fused multiply-adds are the explicit ones of
    # csrc/optim_math.h (where torch's ops have them), not the compiler's choice.
    cflags = ["-O3", "-ffp-contract=off", *_ISA_FLAGS[cap]]
    ldflags: list[str] = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP: the kernels join torch's own libgomp thread pool.
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def cache_root() -> Path:
    if os.environ.get("OPTIMLAB_CACHE_DIR"):
        return Path(os.environ["OPTIMLAB_CACHE_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "optimlab"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "optimlab"


def _module_name(cap: str) -> str:
    return f"optimlab_cpu_{cap.lower()}"


def build_directory(cap: str | None = None, src: Path | None = None) -> Path:
    cap = cap or capability()
    src = src or csrc_dir()
    digest = hashlib.sha256()
    for f in _SOURCES + _HEADERS:
        digest.update(f.encode() + b"\0" + (src / f).read_bytes() if src else f.encode())
    digest.update(repr((_flags(cap), torch.__version__, sys.version_info[:2], platform.machine())).encode())
    return cache_root() / f"cpu-{cap.lower()}-{digest.hexdigest()[:16]}"


_STAMP = "BUILT"  # written once a build has been loaded: the library is complete


def _import_built(name: str, directory: Path) -> ModuleType | None:
    """Import an already built extension without running ninja (fast path of later processes)."""
    stamp = directory / _STAMP
    if not stamp.is_file():
        return None
    lib = directory / stamp.read_text().strip()
    if not lib.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, lib)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None  # rebuilt below
    return module


def _build(cap: str, src: Path, verbose: bool = False) -> ModuleType:
    from torch.utils import cpp_extension

    name = _module_name(cap)
    directory = build_directory(cap, src)
    module = _import_built(name, directory)
    if module is not None:
        return module
    directory.mkdir(parents=True, exist_ok=True)
    cflags, ldflags = _flags(cap)
    # cpp_extension serialises concurrent builds of one directory with a lock file
    module = cpp_extension.load(
        name=name,
        sources=[str(src / f) for f in _SOURCES],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        extra_include_paths=[str(src)],
        build_directory=str(directory),
        verbose=verbose,
    )
    if Path(module.__file__).parent == directory and Path(module.__file__).stem == name:
        tmp = directory / f"{_STAMP}.{os.getpid()}"
        tmp.write_text(Path(module.__file__).name)
        os.replace(tmp, directory / _STAMP)  # atomic
    return module


def load(verbose: bool = False) -> ModuleType:
    """The compiled extension, building it on first use (raises if that is impossible)."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        src = csrc_dir()
        if src is None:
            raise RuntimeError("optimlab's C++ sources (csrc/) were not found next to the package")
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler found (looked for {compiler!r}; set CXX to one)")
        cap = capability()
        errors = []
        # An older compiler may not know the flags of the best capability: try the next ones.
        for candidate in _FALLBACK_ORDER[_FALLBACK_ORDER.index(cap):]:
            try:
                _module = _build(candidate, src, verbose)
                return _module
            except Exception as e:  # noqa: BLE001 - reported as the reason
                errors.append(f"{candidate}: {type(e).__name__}: {_tail(str(e))}")
        raise RuntimeError("building optimlab's C++ CPU kernels failed: " + " | ".join(errors))


def _tail(message: str, lines: int = 3) -> str:
    kept = [ln for ln in message.strip().splitlines() if ln.strip()][-lines:]
    return " / ".join(kept)


def availability() -> str | None:
    """None if the cpp backend can run here, else why not (the build is attempted once)."""
    global _checked, _unavailable_reason
    if not _checked:
        try:
            load()
            _unavailable_reason = None
        except Exception as e:  # noqa: BLE001
            _unavailable_reason = f"the C++ CPU backend is unavailable: {e}"
        _checked = True
    return _unavailable_reason


_dispatch.register_availability("cpp", availability)

_DTYPE = operator.attrgetter("dtype")
_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64,
                     torch.complex64, torch.complex128})  # complex: updated as real views


def check_group(algorithm: str, group: dict, params: list) -> None:
    """The cpp backend's plan-time check (before any param group is updated): a param
    dtype the kernels do not take is refused with an error naming the parameter. (torch's
    for-loop has no CPU kernels for those dtypes either: float8 params fail in its lerp/add.)
    Non-CPU tensors and sparse grads are not refused: they run on the for-loop/foreach."""
    if not params or _DTYPES.issuperset(map(_DTYPE, params)):  # one C-level pass, usual case
        return
    i = next(i for i, p in enumerate(params) if p.dtype not in _DTYPES)
    raise RuntimeError(
        f"optimlab {algorithm} (cpp backend): {_dispatch.param_name(group, i)} has dtype "
        f"{params[i].dtype}; the cpp backend supports float16, bfloat16, float32 and float64 "
        "(complex params are updated as real views)"
    )


_dispatch.register_check("cpp", check_group)


# ---- shared host-side helpers --------------------------------------------------------------
def _value(x) -> float:
    """A host number from a float or a 1-element tensor (after torch's own tensor rounding)."""
    return float(_get_value(x)) if isinstance(x, Tensor) else float(x)


def _like(x, ref: Tensor):
    return x.to(dtype=ref.dtype) if isinstance(x, Tensor) else x


def _real(params: list, *lists: list) -> list[list]:
    """``[params, *lists]`` with complex tensors viewed as real. Grads and state share their
    param's dtype, so when no param is complex (the usual case) nothing else is looked at."""
    # Tensor.is_complex() is several times cheaper than torch.is_complex() (no
    # __torch_function__ dispatch): this runs per tensor on every step.
    if not any(map(Tensor.is_complex, params)):
        return [params, *lists]
    return [[torch.view_as_real(t) if t is not None and t.is_complex() else t for t in lst]
            for lst in (params, *lists)]


def _skipped(found_inf) -> float:
    """found_inf's value (0.0 without AMP)."""
    return 0.0 if found_inf is None else float(found_inf.item())


def _fallback_reason(group, params, grads) -> str | None:
    if group.get("capturable") or group.get("differentiable"):
        return "capturable/differentiable"
    for g in grads:  # (torch keeps each grad on its param's device)
        if g.is_sparse:
            return "sparse grads"
        if not g.is_cpu:
            return f"tensors on {g.device.type}"
    return None


def _run_elsewhere(algorithm, group, params, grads, state, grad_scale=None, found_inf=None) -> bool:
    """Run cases the kernels do not cover (sparse grads, non-CPU tensors, capturable) on the
    for-loop/foreach reference of the same algorithm; True if it did."""
    why = _fallback_reason(group, params, grads)
    if why is None:
        return False
    if _skipped(found_inf):
        return True
    if grad_scale is not None:  # the fused contract: grads are unscaled in place
        for g in grads:
            g.div_(grad_scale.to(g.device))
    backend = "forloop"
    if why.startswith("tensors on") and "foreach" in _dispatch._KERNELS[algorithm]:
        backend = "foreach"
        _dispatch.warn_once(f"cpp-device:{algorithm}", f"optimlab: the cpp backend runs on CPU only "
                            f"({why}); using {backend} for {algorithm}")
    _dispatch.kernel(algorithm, backend)(group, params, grads, state)
    return True


def _by_dtype(params) -> list:
    """Indices of params per dtype: host scalars are rounded like torch rounds them for that dtype."""
    dtypes = list(map(_DTYPE, params))
    if dtypes.count(dtypes[0]) == len(dtypes):  # the usual case: one dtype
        return [range(len(params))]
    buckets: dict[torch.dtype, list[int]] = {}
    for i, d in enumerate(dtypes):
        buckets.setdefault(d, []).append(i)
    return list(buckets.values())


def _pick(lst, idx):
    return lst if lst is None or len(idx) == len(lst) else [lst[i] for i in idx]


def _steps_begin(ext, steps, found_inf):
    """``step += 1`` for each counter (also when found_inf: torch's fused steps take the
    increment back afterwards, see _steps_end); the new values, as ``_get_value`` reads them."""
    return ext.add_to_scalars(steps, 1.0)


def _steps_end(ext, steps, found_inf):
    """torch's fused contract: a skipped step (found_inf) takes its increment back."""
    skipped = _skipped(found_inf)
    if skipped:
        ext.add_to_scalars(steps, -skipped)


def _per_step(fn, values):
    """``[fn(v) for v in values]`` computing each distinct step once."""
    if values and values.count(values[0]) == len(values):  # the usual case: one step for all
        return [fn(values[0])] * len(values)
    cache: dict[float, object] = {}
    out = []
    for v in values:
        if v not in cache:
            cache[v] = fn(v)
        out.append(cache[v])
    return out


@contextlib.contextmanager
def _increment_undone_on_error(ext, steps):
    """Take ``step += 1`` back if the kernel raises. A kernel refuses its input before writing
    anything (csrc/fused_apply.cpp prepare()), e.g. state of the wrong shape from a bad
    checkpoint, so the failed step then leaves the state as it was."""
    try:
        yield
    except Exception:
        ext.add_to_scalars(steps, -1.0)
        raise


def _stepped_update(algorithm: str):
    """Register ``body(ext, group, params, grads, state, steps, grad_scale, found_inf)`` as
    ``algorithm``'s cpp update, with what every such update shares: the fallbacks
    (``_run_elsewhere``), ``step += 1`` before the kernel (``steps``: the new values; taken
    back if the kernel raises) and torch's take-back of a step skipped by ``found_inf``."""

    def wrap(body):
        @functools.wraps(body)
        def update(group, params, grads, state, grad_scale=None, found_inf=None):
            if _run_elsewhere(algorithm, group, params, grads, state, grad_scale, found_inf):
                return
            ext = load()
            steps = _steps_begin(ext, state["step"], found_inf)
            with _increment_undone_on_error(ext, state["step"]):
                body(ext, group, params, grads, state, steps, grad_scale, found_inf)
            _steps_end(ext, state["step"], found_inf)

        return _dispatch.register(algorithm, "cpp")(update)

    return wrap


# ---- the update functions, one per algorithm --------------------------------------------------
@_stepped_update("adam")
def _adam_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    from ..adam import adam_scalars

    lr = _to_scalar(group["lr"])
    beta1, beta2 = (_to_scalar(b) for b in group["betas"])
    wd, amsgrad = group["weight_decay"], group["amsgrad"]
    scalars = _per_step(lambda s: tuple(map(_value, adam_scalars(lr, beta1, beta2, s))), steps)
    for idx in _by_dtype(params):
        ref = params[idx[0]]
        ext.adam(
            _pick(params, idx), _pick(grads, idx), _pick(state["exp_avg"], idx),
            _pick(state["exp_avg_sq"], idx), _pick(state["max_exp_avg_sq"], idx) if amsgrad else [],
            *(_pick(list(column), idx) for column in zip(*scalars)),
            _value(1 - _like(beta1, ref)), _value(_like(beta2, ref)), _value(1 - _like(beta2, ref)),
            float(group["eps"]), _value(wd), _value(1 - lr * wd),
            bool(group["decoupled_weight_decay"]), bool(amsgrad), bool(group["maximize"]),
            grad_scale, found_inf,
        )


@_dispatch.register("sgd", "cpp")
def _sgd_cpp(group, params, grads, state, grad_scale=None, found_inf=None):
    if _run_elsewhere("sgd", group, params, grads, state, grad_scale, found_inf):
        return
    ext = load()
    if _skipped(found_inf):
        return  # nothing happens, not even the creation of momentum buffers
    momentum = _value(group["momentum"])
    bufs = state.get("momentum_buffer")
    first = []
    if momentum != 0:
        for i, p in enumerate(params):
            first.append(bufs[i] is None)
            if bufs[i] is None:  # torch: the buffer starts as a copy of the (decayed) grad
                bufs[i] = torch.empty_like(p, memory_format=torch.preserve_format)
    ext.sgd(
        *_real(params, grads, bufs if momentum != 0 else []), first,
        _value(_to_scalar(group["lr"])), _value(group["weight_decay"]), momentum,
        _value(group["dampening"]), bool(group["nesterov"]), bool(group["maximize"]),
        grad_scale, found_inf,
    )


@_stepped_update("adagrad")
def _adagrad_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    from ..adagrad import adagrad_clr

    lr, lr_decay = _to_scalar(group["lr"]), group["lr_decay"]
    clr = _per_step(lambda s: _value(adagrad_clr(lr, lr_decay, s)), steps)
    ext.adagrad(
        *_real(params, grads, state["sum"]), clr,
        _value(group["weight_decay"]), float(group["eps"]), bool(group["maximize"]), grad_scale, found_inf,
    )


@_stepped_update("adadelta")
def _adadelta_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    ext.adadelta(
        params, grads, state["square_avg"], state["acc_delta"], _value(_to_scalar(group["lr"])),
        _value(group["rho"]), float(group["eps"]), _value(group["weight_decay"]), bool(group["maximize"]),
        grad_scale, found_inf,
    )


@_stepped_update("adamax")
def _adamax_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    from ..adamax import adamax_bias_correction

    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    step_size = _per_step(lambda s: _value(lr / adamax_bias_correction(beta1, s)), steps)
    ext.adamax(
        params, grads, state["exp_avg"], state["exp_inf"], step_size, _value(1 - beta1), _value(beta2),
        float(group["eps"]), _value(group["weight_decay"]), bool(group["maximize"]), grad_scale, found_inf,
    )


@_dispatch.register("asgd", "cpp")
def _asgd_cpp(group, params, grads, state, grad_scale=None, found_inf=None):
    if _run_elsewhere("asgd", group, params, grads, state, grad_scale, found_inf):
        return
    from ..asgd import asgd_next

    ext = load()
    if _skipped(found_inf):
        return
    lr, lambd, alpha, t0 = _to_scalar(group["lr"]), group["lambd"], group["alpha"], group["t0"]
    steps = ext.add_to_scalars(state["step"], 1.0)
    eta = ext.read_scalars(state["eta"])
    mu = ext.read_scalars(state["mu"])
    with _increment_undone_on_error(ext, state["step"]):
        ext.asgd(
            params, grads, state["ax"], eta, mu, _value(lambd), _value(group["weight_decay"]),
            bool(group["maximize"]), grad_scale, found_inf,
        )
    # the next step's eta and mu as the for-loop stores them: rounded to the default dtype
    # (torch.as_tensor) also when the state is float64 (after load_state_dict, float64 params)
    new = _per_step(lambda s: tuple(map(_value, asgd_next(lr, lambd, alpha, t0, s))), steps)
    ext.write_scalars(state["eta"], [eta for eta, _ in new])
    ext.write_scalars(state["mu"], [mu for _, mu in new])


@_dispatch.register("nadam", "cpp")
def _nadam_cpp(group, params, grads, state, grad_scale=None, found_inf=None):
    if _run_elsewhere("nadam", group, params, grads, state, grad_scale, found_inf):
        return
    from ..nadam import nadam_scalars

    ext = load()
    if _skipped(found_inf):
        return  # mu_product advances with the step: a skipped step changes nothing
    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    md, wd = group["momentum_decay"], group["weight_decay"]
    steps = ext.add_to_scalars(state["step"], 1.0)
    products = state["mu_product"]
    # nadam_scalars advances mu_product in place; run it once per distinct (step, product) on
    # a scratch copy with the state's dtype, then store the advanced value in every product.
    cache: dict[tuple, tuple] = {}
    scalars, new_products = [], []
    for s, mp, key_value in zip(steps, products, ext.read_scalars(products)):
        key = (s, key_value, mp.dtype)
        if key not in cache:
            scratch = mp.detach().clone()
            out = nadam_scalars(lr, beta1, beta2, md, s, scratch)
            cache[key] = (tuple(map(_value, out)), float(scratch.item()))
        scalars.append(cache[key][0])
        new_products.append(cache[key][1])
    with _increment_undone_on_error(ext, state["step"]):
        ext.nadam(
            params, grads, state["exp_avg"], state["exp_avg_sq"], [x[0] for x in scalars],
            [x[1] for x in scalars], [x[2] for x in scalars], _value(1 - beta1), _value(beta2),
            _value(1 - beta2), float(group["eps"]), _value(wd), _value(1 - lr * wd),
            bool(group["decoupled_weight_decay"]), bool(group["maximize"]), grad_scale, found_inf,
        )
    ext.write_scalars(products, new_products)  # after the kernel: a refused step changes nothing


@_stepped_update("radam")
def _radam_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    from ..radam import radam_scalars

    lr, (beta1, beta2) = _to_scalar(group["lr"]), group["betas"]
    wd = group["weight_decay"]
    scalars = _per_step(lambda s: tuple(map(_value, radam_scalars(lr, beta1, beta2, s)[:3])), steps)
    ext.radam(
        params, grads, state["exp_avg"], state["exp_avg_sq"], [x[0] for x in scalars],
        [x[1] for x in scalars], [x[2] for x in scalars], _value(lr), _value(1 - beta1), _value(beta2),
        _value(1 - beta2), float(group["eps"]), _value(wd), _value(1 - lr * wd),
        bool(group["decoupled_weight_decay"]), bool(group["maximize"]), grad_scale, found_inf,
    )


@_stepped_update("rmsprop")
def _rmsprop_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    momentum, centered = _value(group["momentum"]), bool(group["centered"])
    ext.rmsprop(
        params, grads, state["square_avg"], state["momentum_buffer"] if momentum > 0 else [],
        state["grad_avg"] if centered else [], _value(_to_scalar(group["lr"])), _value(group["alpha"]),
        float(group["eps"]), _value(group["weight_decay"]), momentum, centered, bool(group["maximize"]),
        grad_scale, found_inf,
    )


@_stepped_update("rprop")
def _rprop_cpp(ext, group, params, grads, state, steps, grad_scale, found_inf):
    etaminus, etaplus = group["etas"]
    size_min, size_max = group["step_sizes"]
    ext.rprop(
        params, grads, state["prev"], state["step_size"], _value(etaminus), _value(etaplus),
        _value(size_min), _value(size_max), bool(group["maximize"]), grad_scale, found_inf,
    )


def _main(argv=None) -> int:
    import argparse
    import time

    parser = argparse.ArgumentParser(description="Build optimlab's C++ CPU kernels ahead of time.")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    module = load(verbose=args.verbose)
    print(f"optimlab cpp backend: {module.__file__} ({module.capability}, "
          f"{module.vector_width_float} floats per vector), ready in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
