"""What every unit test runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import settings as settings_module


@pytest.fixture(autouse=True)
def no_secrets_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that happens to have /run/secrets/backorder-worker must not leak it into these tests. A test
    that wants a secrets directory sets BACKORDER_SECRETS_DIR, or DEFAULT_SECRETS_DIR again, itself."""
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", Path("/nonexistent/backorder-worker"))
