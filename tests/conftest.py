import pytest


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    """Tests choose backends explicitly; a developer's OPTIMLAB_BACKEND must not leak in."""
    monkeypatch.delenv("OPTIMLAB_BACKEND", raising=False)
