"""Compile every Triton kernel ahead of time for a CUDA target, without a GPU.

``python -m optimlab.kernels.triton._aot_check [--arch 90]`` compiles each kernel of
the backend, for each storage dtype and each flag combination, down to a cubin
(Triton ships ptxas). It catches what the interpreter accepts but the compiler does
not (types, casts, control flow), and fails if a kernel compiled with ``ALIGNED`` has
no 128-bit global load in its PTX (the vectorized path). Must run with
``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time

KERNELS = {
    # module: [(kernel, n_roles, {flag: choices}[, {arg: pointer type "*.." or constexpr value}])]
    "adam_family": [
        ("_adam_kernel", 5, {"MAXIMIZE": (0, 1), "WD_MODE": (0, 1, 2), "AMSGRAD": (0, 1)}),
        ("_adamax_kernel", 4, {"MAXIMIZE": (0, 1), "WD_MODE": (0, 1)}),
        ("_nadam_kernel", 4, {"MAXIMIZE": (0, 1), "WD_MODE": (0, 1, 2)}),
        ("_radam_kernel", 4, {"MAXIMIZE": (0, 1), "WD_MODE": (0, 1, 2)}),
        ("_sparse_adam_kernel", 5, {"MAXIMIZE": (0, 1)}, {"row_ref": "*i64"}),
    ],
    "sgd_family": [
        ("_sgd_kernel", 3, {"MAXIMIZE": (0, 1), "HAS_WD": (0, 1), "MOMENTUM": (0, 1), "NESTEROV": (0, 1)}),
        ("_asgd_kernel", 3, {"MAXIMIZE": (0, 1), "HAS_WD": (0, 1)}),
        ("_rprop_kernel", 4, {"MAXIMIZE": (0, 1)}),
    ],
    "adagrad_family": [
        ("_adagrad_kernel", 3, {"MAXIMIZE": (0, 1), "HAS_WD": (0, 1)}),
        ("_rmsprop_kernel", 5, {"MAXIMIZE": (0, 1), "HAS_WD": (0, 1), "MOMENTUM": (0, 1), "CENTERED": (0, 1)}),
        ("_adadelta_kernel", 4, {"MAXIMIZE": (0, 1), "HAS_WD": (0, 1)}),
    ],
    "matrix_family": [
        ("_adafactor_row_kernel", 2, {}, {"BLOCK": 32, "TILE": 64}),
        ("_adafactor_col_kernel", 4, {"MAXIMIZE": (0, 1)}, {"BLOCK": 32, "TILE": 64}),
        ("_adafactor_vec_kernel", 3, {"MAXIMIZE": (0, 1)}),
        ("_adafactor_apply_kernel", 2, {"HAS_WD": (0, 1)}),
        ("_muon_momentum_kernel", 3, {"NESTEROV": (0, 1)}, {"u_ref": "*bf16"}),
        ("_muon_apply_kernel", 2, {}, {"o_ref": "*bf16"}),
    ],
}

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


def check(arch: int = 90, exhaustive: bool = False, verbose: bool = False, quick: bool = False) -> int:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    count, scalar = 0, []
    for module, kernels in KERNELS.items():
        mod = importlib.import_module(f"optimlab.kernels.triton.{module}")
        for name, n_roles, flags, *extra in kernels:
            kernel = getattr(mod, name)
            extra = extra[0] if extra else {}
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
                        constexprs = dict(
                            N_ROLES=n_roles, N_GROUP=7, N_PER=3, ACC64=dtype == "float64",
                            HAS_SCALE=amp[0], HAS_INF=amp[1], BLOCK=1024, ITERS=4, ALIGNED=True,
                            **{k: (bool(v) if k != "WD_MODE" else v) for k, v in var.items()},
                        )
                        constexprs.update(fixed)
                        constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
                        sig = {}
                        for i, arg in enumerate(kernel.arg_names):
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
                        src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
                        t0 = time.time()
                        compiled = triton.compile(src, target=target, options=_options())
                        count += 1
                        if constexprs.get("ALIGNED") and not _VECTOR.search(compiled.asm["ptx"]):
                            scalar.append(f"{name} {dtype} {var}")
                        if verbose:
                            print(f"{name} {dtype} {var} amp={amp[0]}: {time.time() - t0:.2f}s")
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
