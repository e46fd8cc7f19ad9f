"""Benchmark optimlab's Triton kernels against torch's foreach, fused and compiled steps.

For each optimizer, two layouts of ~``--params`` parameters (default 100M):
"few large" (8 tensors) and "many small" (thousands of tensors of mixed sizes). For
each, the median time of one ``step()`` (CUDA events via ``triton.testing.do_bench``),
the bytes it must move (params, grads, state: read + written), the achieved GB/s and
that as a % of the measured device-to-device copy bandwidth.

    python benchmarks/bench_triton.py                      # all optimizers, GPU
    python benchmarks/bench_triton.py --only Adam,SGD --params 2e7
    TRITON_INTERPRET=1 python benchmarks/bench_triton.py --dry-run   # CPU smoke test

``--dry-run`` runs every contender once at a tiny size (on CPU under the interpreter)
and prints the table without timing anything meaningful.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import optimlab
import optimlab.kernels.triton  # noqa: F401 - registers the backend

# name -> (constructor kwargs, state tensors per param (same size), fused in torch?)
OPTIMIZERS = {
    "Adam": (dict(lr=1e-3), 2, True),
    "AdamW": (dict(lr=1e-3, weight_decay=1e-2), 2, True),
    "SGD": (dict(lr=1e-2, momentum=0.9), 1, True),
    "Adagrad": (dict(lr=1e-2), 1, True),
    "RMSprop": (dict(lr=1e-3, momentum=0.9), 2, False),
    "Adadelta": (dict(), 2, False),
    "Adamax": (dict(lr=1e-3), 2, False),
    "ASGD": (dict(lr=1e-2), 1, False),
    "NAdam": (dict(lr=1e-3), 2, False),
    "RAdam": (dict(lr=1e-3), 2, False),
    "Rprop": (dict(lr=1e-3), 2, False),
}


def layouts(total: int, small: int):
    """{'few large': shapes, 'many small': shapes} holding about ``total`` elements."""
    big = [(total // 8,)] * 8
    gen = torch.Generator().manual_seed(0)
    shapes, n = [], 0
    while n < total:
        k = int(torch.randint(small // 4, small * 2, (1,), generator=gen))
        shapes.append((k,))
        n += k
    return {"few large": big, "many small": shapes}


def make(shapes, device, dtype):
    params = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def contenders(name, kwargs, torch_fused: bool, device, compiled_step: bool = True):
    """(label, build(params) -> step callable) for each implementation compared."""
    out = []

    def ours(backend):
        def build(params):
            os.environ["OPTIMLAB_BACKEND"] = backend
            opt = getattr(optimlab, name)(params, **kwargs)
            return opt.step
        return build

    out.append(("optimlab triton", ours("triton")))
    out.append(("optimlab foreach", ours("foreach")))
    out.append(("torch foreach", lambda ps: getattr(torch.optim, name)(ps, **kwargs, foreach=True).step))
    if torch_fused and device.type == "cuda":
        out.append(("torch fused", lambda ps: getattr(torch.optim, name)(ps, **kwargs, fused=True).step))
    if device.type == "cuda" and compiled_step:
        def compiled(ps):
            opt = getattr(torch.optim, name)(ps, **kwargs, foreach=True)

            @torch.compile(fullgraph=False)
            def step():
                opt.step()
            return step
        out.append(("torch.compile(torch step)", compiled))
    return out


def copy_bandwidth(device, nbytes=1 << 30) -> float:
    """Measured device copy bandwidth, GB/s (read + write)."""
    if device.type != "cuda":
        return float("nan")
    import triton.testing

    a = torch.empty(nbytes // 4, device=device)
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), return_mode="median")
    return 2 * nbytes / ms / 1e6


def bench(fn, device, dry_run: bool) -> float:
    if dry_run or device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=50, return_mode="median")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1e8, help="elements per layout (default 1e8)")
    ap.add_argument("--small", type=int, default=20_000, help="typical size of a 'many small' tensor")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--only", default="", help="comma-separated optimizer names")
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile(torch step)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes, run once each (CPU OK)")
    args = ap.parse_args(argv)

    dtype = getattr(torch, args.dtype)
    if args.dry_run:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            print("--dry-run on CPU needs TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        total, small = 3000, 200
    else:
        if not torch.cuda.is_available():
            print("a CUDA device is needed (or --dry-run with TRITON_INTERPRET=1)", file=sys.stderr)
            return 2
        device, total, small = torch.device("cuda"), int(args.params), args.small
    names = [n for n in OPTIMIZERS if not args.only or n in args.only.split(",")]
    copy_bw = copy_bandwidth(device)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (interpreter)'}; "
          f"copy bandwidth {copy_bw:.0f} GB/s; dtype {args.dtype}")
    print(f"{'optimizer':<9} {'layout':<11} {'tensors':>7} {'contender':<26} {'median ms':>10} "
          f"{'GB/s':>8} {'% copy':>7}")
    prev_env = os.environ.get("OPTIMLAB_BACKEND")
    try:
        for name in names:
            kwargs, n_state, torch_fused = OPTIMIZERS[name]
            for layout, shapes in layouts(total, small).items():
                numel = sum(s[0] for s in shapes)
                elt = torch.tensor([], dtype=dtype).element_size()
                # param read+write, grad read, each state read+write
                nbytes = numel * elt * (2 + 1 + 2 * n_state)
                for label, build in contenders(name, kwargs, torch_fused, device, not args.no_compile):
                    params = make(shapes, device, dtype)
                    try:
                        step = build(params)
                        step()  # warm-up: state, compilation, tables
                        ms = bench(step, device, args.dry_run)
                    except Exception as e:  # noqa: BLE001 - report and go on
                        print(f"{name:<9} {layout:<11} {len(shapes):>7} {label:<26} failed: "
                              f"{type(e).__name__}: {str(e)[:80]}")
                        continue
                    gbs = nbytes / ms / 1e6
                    print(f"{name:<9} {layout:<11} {len(shapes):>7} {label:<26} {ms:>10.3f} "
                          f"{gbs:>8.1f} {100 * gbs / copy_bw:>6.1f}%")
                    del params, step
    finally:
        if prev_env is None:
            os.environ.pop("OPTIMLAB_BACKEND", None)
        else:
            os.environ["OPTIMLAB_BACKEND"] = prev_env
    return 0


if __name__ == "__main__":
    sys.exit(main())
