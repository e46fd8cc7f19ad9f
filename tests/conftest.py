import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter: that is how CI tests every
# kernel. (optimlab imports its kernel modules lazily, after this.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread: the suite runs many tiny steps, where thread hand-off only costs
# (torch's bf16 CPU matmul in Muon is ~10^4x slower with 2 threads on tiny matrices).
# Tests of threaded kernels raise this locally.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a developer's OPTIMLAB_BACKEND must not leak in."""
    monkeypatch.delenv("OPTIMLAB_BACKEND", raising=False)
