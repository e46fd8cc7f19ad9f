"""The plan is final: a fused backend that does not take a group (sparse grads, tensors on
another device) is refused when the step is planned, ``opt.backends()`` names the backend
that really runs, and GradScaler's contract (skip on found_inf, unscale the grads) holds
for a group planned off the fused backend."""

import warnings

import pytest
import torch

import optimlab
from optimlab import _dispatch

_SPARSE_ALGS = [("SGD", dict(lr=0.1, momentum=0.9)), ("Adagrad", dict(lr=0.1))]


def _sparse(rows, values, shape):
    return torch.sparse_coo_tensor(torch.tensor([rows]), values, shape)


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    dense = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))
    table = torch.nn.Parameter(torch.randn(6, 3, generator=gen, dtype=torch.float64))
    return dense, table


def _grads(dense, table, seed, scale=1.0):
    gen = torch.Generator().manual_seed(100 + seed)
    dense.grad = torch.randn(4, 3, generator=gen, dtype=torch.float64) * scale
    table.grad = _sparse([0, 2, 2], torch.randn(3, 3, generator=gen, dtype=torch.float64) * scale,
                         (6, 3))


@pytest.mark.parametrize("name,kw", _SPARSE_ALGS)
@pytest.mark.parametrize("env", [None, "cpp", "triton"])
def test_backends_names_the_fallback_for_sparse_grads(name, kw, env, monkeypatch):
    if env is not None:
        monkeypatch.setenv("OPTIMLAB_BACKEND", env)
    if env == "triton":
        from optimlab.kernels.triton import available, interpreting

        if available() is not None or not interpreting():
            pytest.skip("triton needs TRITON_INTERPRET=1 here")
    dense, table = _params()
    opt = getattr(optimlab, name)([dense, table], **kw)
    before = opt.backends()[0]
    _grads(dense, table, 0)
    choice = opt.backends()[0]
    if before.name not in _dispatch.FUSED_BACKENDS:
        pytest.skip(f"the default here is {before.name}")
    assert choice.name == "forloop"
    assert choice.reason.startswith(before.reason) and "sparse grads" in choice.reason
    opt.step()  # what the step runs: the for-loop (the same numbers as torch's)
    ref_dense, ref_table = _params()
    ref = getattr(torch.optim, name)([ref_dense, ref_table], **kw)
    _grads(ref_dense, ref_table, 0)
    ref.step()
    torch.testing.assert_close(dense, ref_dense, rtol=0, atol=0)
    torch.testing.assert_close(table, ref_table, rtol=0, atol=0)
    dense.grad = table.grad = None
    dense.grad = torch.zeros_like(dense)
    assert opt.backends()[0] == before  # dense grads only: the fused backend again


def test_backends_names_the_fallback_for_other_devices(monkeypatch):
    monkeypatch.setenv("OPTIMLAB_BACKEND", "cpp")
    monkeypatch.setattr(_dispatch, "_warned", set())
    p = torch.nn.Parameter(torch.randn(3, device="meta"))
    opt = optimlab.Adam([p])
    with pytest.warns(UserWarning, match="cpp backend does not take tensors on meta; using foreach"):
        choice = opt.backends()[0]
    assert choice == _dispatch.BackendChoice(
        "foreach", "OPTIMLAB_BACKEND=cpp; the cpp backend does not take tensors on meta")
    p.grad = torch.randn(3, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        assert opt.backends()[0] == choice
        opt.step()
    assert opt.state[p]["exp_avg"].device.type == "meta"


def _scaled_run(name, kw, groups, scale, found_inf_at, torch_cls=False):
    """Steps with GradScaler-style grad_scale/found_inf handed to a fused=True optimizer,
    or (``torch_cls``) torch.optim's for-loop on grads unscaled by hand, skipping the same steps."""
    dense, table = _params()
    cls = getattr(torch.optim, name) if torch_cls else getattr(optimlab, name)
    opt = cls([{"params": [dense]}, {"params": [table], **groups}], **kw,
              **({} if torch_cls else {"fused": True}))
    for i in range(3):
        skip = i == found_inf_at
        _grads(dense, table, i, scale=1.0 if torch_cls else scale)
        if torch_cls:
            if not skip:
                opt.step()
            continue
        opt.grad_scale = torch.tensor(scale, dtype=torch.float32)
        opt.found_inf = torch.tensor(1.0 if skip else 0.0)
        try:
            opt.step()
        finally:
            del opt.grad_scale, opt.found_inf
        if not skip:  # the fused contract: the grads are left unscaled
            torch.testing.assert_close(dense.grad, _grads_only(0, i)[0])
            torch.testing.assert_close(table.grad.to_dense(), _grads_only(1, i)[1].to_dense())
    return dense, table, opt


def _grads_only(_, seed):
    dense, table = _params()
    _grads(dense, table, seed)
    return dense.grad, table.grad


@pytest.mark.parametrize("name,kw", _SPARSE_ALGS)
@pytest.mark.parametrize("table_group", [{"fused": None}, {"fused": False}])
def test_grad_scaler_contract_on_a_group_planned_off_the_fused_backend(name, kw, table_group):
    """fused=True makes GradScaler hand grad_scale/found_inf to the optimizer; a group that
    runs elsewhere (sparse grads: the for-loop; fused=False) still skips and unscales."""
    ours_dense, ours_table, opt = _scaled_run(name, kw, table_group, 1024.0, found_inf_at=1)
    assert opt._step_supports_amp_scaling
    assert [c.name for c in opt.backends()] == ["cpp", "forloop"]
    ref_dense, ref_table, _ = _scaled_run(name, kw, table_group, 1024.0, found_inf_at=1,
                                          torch_cls=True)
    torch.testing.assert_close(ours_dense, ref_dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_table, ref_table, rtol=0, atol=0)


def test_a_skipped_step_changes_nothing_off_the_fused_backend():
    dense, table = _params()
    opt = optimlab.SGD([{"params": [dense]}, {"params": [table], "fused": None}], lr=0.1,
                       momentum=0.9, fused=True)
    _grads(dense, table, 0, scale=8.0)
    before = [dense.detach().clone(), table.detach().clone(), table.grad.clone()]
    opt.grad_scale, opt.found_inf = torch.tensor(8.0), torch.tensor(1.0)
    opt.step()
    assert torch.equal(dense, before[0]) and torch.equal(table, before[1])
    assert torch.equal(table.grad.to_dense(), before[2].to_dense())  # not unscaled either
    assert table not in opt.state or not opt.state[table]
