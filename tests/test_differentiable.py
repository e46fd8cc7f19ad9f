"""differentiable=True: a step is differentiable w.r.t. params, grads and state, as in torch.

Like torch's own test (``_diff_fn`` in test/optim/test_optim.py), one step runs from a
state whose elementwise tensors require grad; we compare the step's outputs *and* the
gradients of a random projection of them w.r.t. every input, against torch.
"""

from __future__ import annotations

import pytest
import torch

from helpers import outcome
from optim_db import implemented

DTYPE = torch.float64


def _cases():
    for spec in implemented():
        if "differentiable" not in spec.info.supported_impls:
            continue
        for cfg in spec.configs(DTYPE):
            if not cfg.complex_param and cfg.problem is None:
                yield pytest.param(spec, cfg, id=f"{spec.name}-{cfg.desc}")


def _warm_state(spec, cfg):
    """State after two ordinary steps of torch's optimizer (the starting point)."""
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1)))
    opt = spec.torch_cls([p], **cfg.kwargs)
    for i in range(2):
        p.grad = torch.sin(p.detach() * (i + 2))
        opt.step()
    return p.detach(), dict(opt.state[p])


def _diff_step(cls, kwargs, p0, g, state):
    p = p0.clone()
    p.grad = g
    opt = cls([p], **kwargs, differentiable=True)
    opt.state[p].update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    opt.step()
    return (p,) + tuple(v for v in opt.state[p].values() if torch.is_tensor(v) and v.requires_grad)


@pytest.mark.parametrize("spec,cfg", _cases())
def test_differentiable_step_matches_torch(spec, cfg):
    kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cfg.kwargs.items()}
    warm = outcome(lambda: _warm_state(spec, cfg))
    if warm[0] == "raise":  # torch refuses the configuration itself: covered by test_errors
        pytest.skip(f"torch refuses {cfg.desc!r} on CPU: {warm[2][:60]}")
    p_value, state = warm[1]
    results = []
    for cls in (spec.torch_cls, spec.ours_cls):
        p0 = p_value.clone().requires_grad_(True)
        g = torch.cos(p_value * 3).requires_grad_(True)
        leaves = {k: (v.clone().requires_grad_(True) if torch.is_tensor(v) and v.shape == p0.shape else v)
                  for k, v in state.items()}
        res = outcome(lambda: _diff_step(cls, kwargs, p0, g, leaves))
        if res[0] == "ok":
            outs = res[1]
            weights = [torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o) for o in outs]
            inputs = [p0, g] + [v for v in leaves.values() if torch.is_tensor(v) and v.requires_grad]
            grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), inputs,
                                        allow_unused=True)
            res = ("ok", [o.detach() for o in outs], grads)
        results.append(res)
    ref, ours = results
    if ref[0] == "raise":
        assert ours[0] == "raise" and ours[1:] == ref[1:], (ours, ref)
        return
    assert ours[0] == "ok", ours
    assert len(ours[1]) == len(ref[1]) and len(ours[2]) == len(ref[2])
    for a, b in zip(ours[1] + list(ours[2]), ref[1] + list(ref[2])):
        assert (a is None) == (b is None)
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
