"""Settings come from the environment, and the README documents every one of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.domain.model import PaymentTiming
from worker.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def env_name(field: str) -> str:
    return field.upper() if field in ("kafka_bootstrap_servers", "database_url") else f"BACKORDER_{field.upper()}"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented_in_the_readme(field: str) -> None:
    assert f"`{env_name(field)}`" in README


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db/backorder")
    monkeypatch.setenv("BACKORDER_KAFKA_CONSUMER_CONFIG", '{"session.timeout.ms": 6000}')
    monkeypatch.setenv("BACKORDER_PAYMENT_TIMING", "AT_SHIPMENT")
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka_consumer_config == {"session.timeout.ms": 6000}
    assert settings.payment_timing is PaymentTiming.AT_SHIPMENT
    assert "secret" not in repr(settings) and "secret" not in settings.model_dump_json()
    with pytest.raises(ValidationError):
        settings.batch_size = 3


def test_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()
