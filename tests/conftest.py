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
    """Tests choose backends explicitly; a developer's OPTIMLAB_BACKEND, or a table of measured
    defaults in their cache (python -m optimlab.bench --update-defaults), must not leak in."""
    monkeypatch.delenv("OPTIMLAB_BACKEND", raising=False)
    monkeypatch.setenv("OPTIMLAB_DEFAULTS_DIR", os.path.join(os.path.dirname(__file__), "no-such-dir"))
    from optimlab import _measured

    _measured.user_table.cache_clear()


@pytest.fixture
def triton_env(monkeypatch):
    """Steps run on the triton backend (interpreted on the CPU)."""
    monkeypatch.setenv("OPTIMLAB_BACKEND", "triton")


def pytest_sessionstart(session):
    """``OPTIMLAB_REQUIRE_BACKENDS=cpp,triton`` (set by CI): a listed backend that cannot run
    here fails the run at once, instead of its tests being filtered out or skipped, so a
    broken C++ build or Triton install cannot pass as "skipped"."""
    required = [b.strip() for b in os.environ.get("OPTIMLAB_REQUIRE_BACKENDS", "").split(",") if b.strip()]
    if not required:
        return
    import optimlab  # noqa: F401  (registers every backend)
    from optimlab import _dispatch

    for backend in required:
        check = _dispatch._AVAILABILITY.get(backend)
        why = check() if check is not None else f"optimlab has no backend named {backend!r}"
        if why:
            pytest.exit(f"OPTIMLAB_REQUIRE_BACKENDS lists {backend}, which cannot run here: {why}", returncode=1)
