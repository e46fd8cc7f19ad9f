"""``python -m optimlab.selfcheck``: passes here, and fails when a backend is wrong."""

import subprocess
import sys

import pytest
import torch

from optimlab import _dispatch, selfcheck


def test_quick_cpu_selfcheck_passes():
    # the command a user (and a lent GPU, with --device cuda) runs first
    # (three optimizers that cover every CPU backend; tests/test_parity.py checks them all)
    proc = subprocess.run([sys.executable, "-m", "optimlab.selfcheck", "--device", "cpu", "--quick",
                           "--optimizers", "Adam,SGD,Adafactor"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("optimlab selfcheck on cpu: PASS"), last
    for backend in ("foreach", "cpp", "triton"):  # every backend of the CPU was checked
        assert f" {backend} " in proc.stdout


def _off_by_a_little(update):
    def wrong(group, params, grads, state, **kw):
        update(group, params, grads, state, **kw)
        for p in params:
            p.add_(0.1)
    return wrong


@pytest.mark.parametrize("backend", ["cpp", "foreach"])
def test_a_wrong_backend_fails_the_check(backend, monkeypatch):
    monkeypatch.setitem(_dispatch._KERNELS["adam"], backend,
                        _off_by_a_little(_dispatch.kernel("adam", backend)))
    results = selfcheck.run_checks("cpu", quick=True, optimizers=["Adam"], backends=[backend])
    assert results and all(r.status == "FAIL" for r in results), results
    assert selfcheck.verdict(results, "cpu").startswith("optimlab selfcheck on cpu: FAIL")


def test_a_skipped_overflow_step_that_moves_state_fails(monkeypatch):
    # a fused update that ignores found_inf must be caught by the GradScaler case
    update = _dispatch.kernel("sgd", "cpp")

    def ignores_found_inf(group, params, grads, state, grad_scale=None, found_inf=None):
        if grad_scale is not None:
            grads = [g / grad_scale for g in grads]
        grads = [torch.nan_to_num(g, posinf=1.0) for g in grads]
        update(group, params, grads, state)

    monkeypatch.setitem(_dispatch._KERNELS["sgd"], "cpp", ignores_found_inf)
    results = selfcheck.run_checks("cpu", quick=True, optimizers=["SGD"], backends=["cpp"])
    in_kernel = [r for r in results if "GradScaler in kernel" in r.case]
    assert in_kernel and in_kernel[0].status == "FAIL", results


def test_bad_arguments_are_clean_errors(capsys):
    with pytest.raises(SystemExit) as info:
        selfcheck.main(["--optimizers", "Adamm"])
    assert info.value.code == 2
    assert "unknown optimizers ['Adamm']" in capsys.readouterr().err
