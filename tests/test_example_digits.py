"""examples/train_digits.py trains to the same losses with either import line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def losses(impl: str, backend: str | None = None) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "OPTIMLAB_BACKEND"}
    if backend:
        env["OPTIMLAB_BACKEND"] = backend
    out = subprocess.run(
        # (3 epochs, resumed from a checkpoint after the first: the script's default is 6)
        [sys.executable, str(SCRIPT), "--impl", impl, "--json", "--epochs", "3", "--resume-at", "1"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def torch_losses():
    result = losses("torch")
    assert result[-1] < 0.5 * result[0], "the example should actually train"
    return result


def test_forloop_backend_is_bitwise_identical(torch_losses):
    # optimlab's for-loop backend runs torch's for-loop arithmetic, op for op.
    assert losses("optimlab", "forloop") == torch_losses


def test_default_backend_matches(torch_losses):
    # The default backend may reorder float32 arithmetic (foreach/fused): equal to rounding.
    assert losses("optimlab") == pytest.approx(torch_losses, rel=1e-5)
