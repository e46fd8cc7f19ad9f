"""Compile every Triton kernel ahead of time for a CUDA target, without a GPU.

``python -m optimlab.kernels.triton._aot_check [--arch 90]`` compiles each kernel of
the backend, for each storage dtype and each flag combination, down to a cubin
(Triton ships ptxas). It catches what the interpreter accepts but the compiler does
not (types, casts, control flow), and fails if a kernel compiled with ``ALIGNED`` has
no 128-bit global load in its PTX (the vectorized path); ``-v`` prints each variant's
global loads and stores. The kernels come from the backend's table (``_table``: every
elementwise op through the driver, and the hand-written reductions). Must run with
``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys


def _kernels():
    """(module, kernel name, number of roles, {flag: values}, {argument: pointer type or
    constexpr}) of every kernel: the elementwise ones (the driver with each op) and the
    hand-written ones, from the backend's table."""
    from ._table import ELEMENTWISE, FLAG_VALUES, RAW

    def values(flags):
        return {f: FLAG_VALUES.get(f, (0, 1)) for f in flags}

    for name, spec in ELEMENTWISE.items():
        yield (spec.module, f"_{name}_kernel", len(spec.roles), values(spec.flags),
               {f"ref{k}": "*bf16" for k in spec.bf16})
    for module, kernels in RAW.items():
        for name, n_roles, flags, extra in kernels:
            yield module, name, n_roles, values(flags), extra


#: a 128-bit global load in PTX (v4 of 32-bit words, v2 of 64-bit ones)
_VECTOR = re.compile(r"ld\.global(\.\w+)*\.v(4\.b32|2\.b64|4\.f32|2\.f64)")

_PTR = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16", "float64": "*fp64"}


def _options() -> dict:
    """The compile options every launch passes (``_launcher.LAUNCH_OPTIONS``)."""
    from ._launcher import LAUNCH_OPTIONS

    return dict(LAUNCH_OPTIONS)


def _variants(flags: dict, exhaustive: bool):
    names = list(flags)
    if not names:
        yield {}
        return
    if exhaustive:
        for combo in itertools.product(*(flags[n] for n in names)):
            yield dict(zip(names, combo))
    else:  # all off, all on, and each flag's values alone
        yield {n: flags[n][0] for n in names}
        yield {n: flags[n][-1] for n in names}
        for n in names:
            for v in flags[n][1:-1]:
                yield {**{m: flags[m][0] for m in names}, n: v}


def _compile(kernel, n_roles, dtype, amp, var, fixed, ptr_types, target):
    """Compile one variant: an elementwise kernel (``_elementwise.Kernel``) as the driver
    with its op's constexprs, any other as it is."""
    import triton
    from triton.compiler import ASTSource

    constexprs = dict(
        N_ROLES=n_roles, N_GROUP=7, N_PER=3, ACC64=dtype == "float64",
        HAS_SCALE=amp[0], HAS_INF=amp[1], BLOCK=1024, ITERS=4, ALIGNED=True,
        **{k: (bool(v) if k != "WD_MODE" else v) for k, v in var.items()},
    )
    constexprs.update(fixed)
    from ._elementwise import Kernel, elementwise_kernel

    fn = kernel
    if isinstance(kernel, Kernel):  # the driver with this op
        constexprs.update(kernel.constexprs(constexprs))
        fn = elementwise_kernel
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    sig = {}
    for arg in fn.arg_names:
        if arg in ptr_types:
            sig[arg] = ptr_types[arg]
        elif arg in constexprs:
            sig[arg] = "constexpr"
        elif arg == "itab":
            sig[arg] = "*i64"
        elif arg == "stab":
            sig[arg] = "*fp64"
        elif arg in ("grad_scale", "found_inf"):
            sig[arg] = "*fp32"
        elif arg in ("n_tensors", "n_entries"):
            sig[arg] = "i32"
        else:
            sig[arg] = _PTR[dtype]
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=target, options=_options())


def _counts(ptx: str) -> str:
    """Global loads and stores in ``ptx`` (what a kernel moves: compare before/after a change)."""
    ld, st = re.findall(r"ld\.global[.\w]*", ptx), re.findall(r"st\.global[.\w]*", ptx)
    vec = sum(".v" in x for x in ld + st)
    return f"{len(ld)} global loads, {len(st)} global stores ({vec} of them vectors)"


def check(arch: int = 90, exhaustive: bool = False, verbose: bool = False, quick: bool = False) -> int:
    import importlib

    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    count, scalar = 0, []
    for module, name, n_roles, flags, extra in _kernels():
        kernel = getattr(importlib.import_module(f"optimlab.kernels.triton.{module}"), name)
        ptr_types = {k: v for k, v in extra.items() if isinstance(v, str)}
        fixed = {k: v for k, v in extra.items() if not isinstance(v, str)}
        for dtype in ("float32", "bfloat16", "float16", "float64"):
            for amp in ((False, False), (True, True)):
                variants = list(_variants(flags, exhaustive))
                if quick:  # all flags on with AMP in fp32/bf16, all off in fp16/fp64
                    keep = amp[0] == (dtype in ("float32", "bfloat16"))
                    variants = (variants[1:2] or variants[:1]) if amp[0] else variants[:1]
                    variants = variants if keep else []
                for var in variants:
                    compiled = _compile(kernel, n_roles, dtype, amp, var, fixed, ptr_types, target)
                    count += 1
                    if not _VECTOR.search(compiled.asm["ptx"]) and "ALIGNED" in kernel.arg_names:
                        scalar.append(f"{name} {dtype} {var}")
                    if verbose:
                        print(f"{name} {dtype} {var} amp={amp[0]}: {_counts(compiled.asm['ptx'])}")
    if scalar:
        raise AssertionError("compiled ALIGNED, yet no 128-bit global load (ld.global.v4/v2) in "
                             "the PTX of: " + "; ".join(scalar))
    return count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--exhaustive", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one variant per kernel and dtype")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET to compile", file=sys.stderr)
        return 2
    n = check(args.arch, args.exhaustive, args.verbose, args.quick)
    print(f"compiled {n} kernel variants for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
