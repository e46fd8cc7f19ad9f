"""optimlab vs torch.optim, for every optimizer x backend x configuration x dtype.

Each optimlab backend is run against torch.optim's same backend (forloop or
foreach); backends torch does not have (triton, cpp) run against torch's for-loop.
"""

from __future__ import annotations

import copy

import pytest
import torch

import optimlab
from helpers import FUSED_F32_TOL, Run, assert_same, checkpoint, outcome
from optim_db import ALL_NAMES, SPECS, backends, flags_for, implemented

DTYPES = (torch.float64, torch.float32)


def _cases():
    for spec in implemented():
        for backend in backends(spec):
            for dtype in DTYPES:
                for cfg in spec.configs(dtype):
                    yield pytest.param(
                        spec, backend, cfg, dtype,
                        id=f"{spec.name}-{backend}-{str(dtype)[6:]}-{cfg.desc}",
                    )


def _select(spec, backend, monkeypatch):
    """(optimlab flags, torch flags) that run ``backend`` against torch's same backend."""
    if backend in ("forloop", "foreach"):
        flags = flags_for(spec, backend)
        return flags, flags
    # Fused backends: forced by the environment; torch's default on the CPU is its for-loop
    # (no flags on either side, so param groups compare equal).
    monkeypatch.setenv("OPTIMLAB_BACKEND", backend)
    return {}, {}


def test_exports():
    missing = [n for n in ALL_NAMES if not hasattr(optimlab, n)]
    assert not missing, f"optimlab lacks {missing}"
    for name in ALL_NAMES:
        assert issubclass(getattr(optimlab, name), torch.optim.Optimizer)


@pytest.mark.parametrize("spec,backend,cfg,dtype", _cases())
def test_matches_torch(spec, backend, cfg, dtype, monkeypatch):
    ours_flags, torch_flags = _select(spec, backend, monkeypatch)
    ref = outcome(lambda: Run(spec, spec.torch_cls, cfg, dtype, torch_flags))
    ours = outcome(lambda: Run(spec, spec.ours_cls, cfg, dtype, ours_flags))
    if ref[0] == "raise":  # torch refuses this combination: so must we, identically
        assert ours[0] == "raise" and ours[1:] == ref[1:], (ours, ref)
        return
    assert ours[0] == "ok", ours
    ref, ours = ref[1], ours[1]
    assert {c.name for c in ours.opt.backends()} == {backend}
    for _ in range(spec.steps):
        r = outcome(lambda: ref.steps(1))
        o = outcome(lambda: ours.steps(1))
        assert o[0] == r[0] and o[1:] == r[1:] if r[0] == "raise" else o[0] == "ok", (o, r)
        if r[0] == "raise":
            return
        fused_f32 = backend in ("cpp", "triton") and dtype == torch.float32
        assert_same(ours, ref, dtype, FUSED_F32_TOL if fused_f32 else None)


def _interop_cases():
    for spec in implemented():
        for cfg in spec.configs(torch.float64):
            for direction in ("torch->optimlab", "optimlab->torch"):
                yield pytest.param(spec, cfg, direction, id=f"{spec.name}-{direction}-{cfg.desc}")


@pytest.mark.parametrize("spec,cfg,direction", _interop_cases())
def test_state_dict_interop(spec, cfg, direction):
    """Checkpoint one library's optimizer, resume in the other: it continues in lockstep
    with a resume of the same checkpoint in the first library. (Resuming is compared
    with resuming, not with the uninterrupted run: torch's load_state_dict casts state
    to the params' dtype, so even torch->torch differs from never checkpointing.)"""
    dtype = torch.float64
    src_cls, dst_cls = (spec.torch_cls, spec.ours_cls)
    if direction == "optimlab->torch":
        src_cls, dst_cls = dst_cls, src_cls
    flags = flags_for(spec, "forloop")
    if outcome(lambda: Run(spec, spec.torch_cls, cfg, dtype, flags).steps(1))[0] == "raise":
        pytest.skip("torch refuses this configuration (covered by test_matches_torch)")
    first = Run(spec, src_cls, cfg, dtype, flags)
    first.steps(2)
    ckpt = checkpoint(first.opt)
    resumed = []
    for cls in (src_cls, dst_cls):
        params = [torch.nn.Parameter(p.detach().clone()) for p in first.params]
        run = Run(spec, cls, cfg, dtype, flags, params=params)
        run.opt.load_state_dict(copy.deepcopy(ckpt))
        resumed.append(run)
    control, other = resumed
    assert_same(other, control, dtype)
    control.steps(2)
    other.steps(2)
    assert_same(other, control, dtype)
