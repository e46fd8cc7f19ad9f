"""Run torch.optim and optimlab side by side on the same problem and compare them."""

from __future__ import annotations

import copy
import io

import torch

from optim_db import Config, OptimSpec, flags_for, loss_fn, make_params

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
# Fused kernels (cpp, triton) vs torch's CPU for-loop in float32: the kernels use a
# correctly rounded sqrt, torch's vectorized CPU sqrt is up to 1 ulp off; centered
# RMSprop's sqrt(square_avg - grad_avg^2) cancels and amplifies that to ~2e-5.
FUSED_F32_TOL = dict(rtol=5e-5, atol=1e-6)


def param_groups(spec: OptimSpec, params):
    if not spec.info.supports_param_groups:
        return params
    return [{"params": params[:2]}, {"params": params[2:]}]


def closure_for(spec: OptimSpec, opt, params, kind):
    def closure():
        opt.zero_grad()
        loss = loss_fn(kind, params)
        loss.backward()
        return loss

    return closure


class Run:
    """One optimizer on its own copy of the problem."""

    def __init__(self, spec: OptimSpec, cls, cfg: Config, dtype, flags: dict, params=None):
        self.spec, self.kind = spec, cfg.problem or spec.problem
        self.params = params if params is not None else make_params(self.kind, dtype, cfg.complex_param)
        kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cfg.kwargs.items()}
        self.opt = cls(param_groups(spec, self.params), **kwargs, **flags)

    def steps(self, n: int):
        for _ in range(n):
            self.opt.step(closure_for(self.spec, self.opt, self.params, self.kind))


def outcome(fn):
    """('ok', result) or ('raise', type, message)."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - we compare whatever torch raises
        return ("raise", type(e), str(e))


def _same_value(a, b, tol, where):
    if torch.is_tensor(b):
        assert torch.is_tensor(a), f"{where}: expected a tensor, got {type(a)}"
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, where
        if a.is_sparse:
            a, b = a.to_dense(), b.to_dense()
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{where}: {m}")
    elif isinstance(b, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), where
        for x, y in zip(a, b):
            _same_value(x, y, tol, where)
    elif isinstance(b, float):
        assert abs(a - b) <= tol["atol"] + tol["rtol"] * abs(b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same(ours, ref, dtype, tol=None):
    """Params, every state entry (names, order, dtypes, values) and param groups agree."""
    tol = tol or TOL[dtype]
    for i, (a, b) in enumerate(zip(ours.params, ref.params)):
        _same_value(a.detach(), b.detach(), tol, f"param {i}")
    so, sr = ours.opt.state_dict(), ref.opt.state_dict()
    assert so["state"].keys() == sr["state"].keys(), "state has entries for different params"
    for pid, st in sr["state"].items():
        assert list(so["state"][pid]) == list(st), f"state {pid} keys"
        for key, value in st.items():
            _same_value(so["state"][pid][key], value, tol, f"state[{pid}][{key}]")
    assert len(so["param_groups"]) == len(sr["param_groups"])
    for go, gr in zip(so["param_groups"], sr["param_groups"]):
        assert go.keys() == gr.keys(), f"param group keys {set(go) ^ set(gr)}"
        for key in gr:
            _same_value(go[key], gr[key], tol, f"param_group[{key}]")


def checkpoint(opt) -> dict:
    """state_dict through torch.save/torch.load, as a user checkpoints."""
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def snapshot(opt, params):
    return copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))


def random_grads(params, seed, scale=1.0):
    """Reproducible grads for ``params`` (drawn in float64, then in each param's dtype)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * scale
            for p in params]
