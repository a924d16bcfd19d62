"""Settings come from the environment, and the README documents every one of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker import settings as settings_module
from worker.adapters.kafka import admin_config, consumer_config, producer_config
from worker.domain.model import PaymentTiming
from worker.entrypoints.cli import main
from worker.settings import MASK, Settings, masked_database_url

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.fixture(autouse=True)
def no_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the shell running the tests has set (a local stack's DATABASE_URL, say) is no test's setting."""
    for name in list(os.environ):
        if name.startswith("BACKORDER_") or name in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
            monkeypatch.delenv(name)


def env_name(field: str) -> str:
    return field.upper() if field in ("kafka_bootstrap_servers", "database_url") else f"BACKORDER_{field.upper()}"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented_in_the_readme(field: str) -> None:
    assert f"`{env_name(field)}`" in README


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:db-pw-0@db/backorder")
    monkeypatch.setenv("BACKORDER_KAFKA_CONSUMER_CONFIG", '{"session.timeout.ms": 6000}')
    monkeypatch.setenv("BACKORDER_PAYMENT_TIMING", "AT_SHIPMENT")
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka_consumer_config == {"session.timeout.ms": 6000}
    assert settings.payment_timing is PaymentTiming.AT_SHIPMENT
    assert "db-pw-0" not in repr(settings) and "db-pw-0" not in settings.model_dump_json()
    with pytest.raises(ValidationError):
        settings.batch_size = 3


def test_nonsense_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKORDER_BATCH_SIZE", "0")
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # days added to dates: the events' bound (3,650), or the sweep and every order of a product overflow
        ("BACKORDER_STALE_AFTER_DAYS", "2147483647"),
        ("BACKORDER_LEAD_TIME_DAYS", "10000000"),
        ("BACKORDER_STARVATION_DAYS", "inf"),
        ("BACKORDER_STARVATION_DAYS", "1e12"),
        ("BACKORDER_STATUS_UPDATE_DAYS", "7,100000000"),
        ("BACKORDER_SWEEP_INTERVAL_SECONDS", "inf"),
        # what the rules refuse, refused with the settings
        ("BACKORDER_PRIORITY_RANKS", "vip,vip"),
        ("BACKORDER_STATUS_UPDATE_DAYS", "14,7"),
    ],
)
def test_settings_the_rules_cannot_hold_are_refused_with_the_settings(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


SASL = "sasl-pw-inline-1"
TLS = "tls-key-pw-inline-2"
OAUTH = "oauth-client-secret-3"


def run_settings_command(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["settings"]) == 0
    return capsys.readouterr().out


def test_settings_masks_every_kafka_secret_given_inline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://backorder:db-pw-4@db:5432/backorder")
    monkeypatch.setenv(
        "BACKORDER_KAFKA_CONFIG",
        json.dumps(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "backorder",
                "sasl.password": SASL,
                "ssl.key.password": TLS,
                "ssl.keystore.password": "keystore-pw-5",
                "ssl.key.pem": "-----BEGIN PRIVATE KEY-----pem-6",
                "sasl.oauthbearer.client.secret": OAUTH,
                "sasl.oauthbearer.config": "principal=x secret=oauth-config-7",
                "some.future.token": "future-token-8",
            }
        ),
    )
    monkeypatch.setenv("BACKORDER_KAFKA_CONSUMER_CONFIG", '{"sasl.password": "consumer-pw-9"}')
    monkeypatch.setenv("BACKORDER_KAFKA_PRODUCER_CONFIG", '{"ssl.key.password": "producer-pw-10"}')
    out = run_settings_command(capsys)
    for secret in (SASL, TLS, OAUTH, "db-pw-4", "keystore-pw-5", "pem-6", "oauth-config-7", "future-token-8"):
        assert secret not in out
    assert "consumer-pw-9" not in out and "producer-pw-10" not in out
    shown = json.loads(out)
    assert shown["kafka_config"]["sasl.password"] == MASK
    assert shown["kafka_config"]["sasl.username"] == "backorder"  # what is not secret stays readable
    assert shown["database_url"] == f"postgresql://backorder:{MASK}@db:5432/backorder"
    settings = Settings()
    assert SASL not in repr(settings) and SASL not in settings.model_dump_json()
    # librdkafka still gets them.
    assert consumer_config(settings)["sasl.password"] == "consumer-pw-9"
    assert producer_config(settings)["sasl.password"] == SASL
    assert producer_config(settings)["ssl.key.password"] == "producer-pw-10"
    assert admin_config(settings)["ssl.key.password"] == TLS


def test_kafka_secrets_from_separate_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKORDER_KAFKA_CONFIG", '{"security.protocol": "SASL_SSL", "sasl.username": "backorder"}')
    monkeypatch.setenv("BACKORDER_KAFKA_SASL_PASSWORD", SASL)
    monkeypatch.setenv("BACKORDER_KAFKA_SSL_KEY_PASSWORD", TLS)
    monkeypatch.setenv("BACKORDER_KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", OAUTH)
    out = run_settings_command(capsys)
    assert SASL not in out and TLS not in out and OAUTH not in out
    settings = Settings()
    for config in (consumer_config(settings), producer_config(settings), admin_config(settings)):
        assert config["sasl.password"] == SASL
        assert config["ssl.key.password"] == TLS
        assert config["sasl.oauthbearer.client.secret"] == OAUTH
        assert config["sasl.username"] == "backorder"


def test_secrets_from_files_as_kubernetes_mounts_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A Kubernetes secret volume: each key a symlink to ..data/<key>, each value with the newline editors add.
    data = tmp_path / "..2026_01_01" / "x"
    data.parent.mkdir()
    (tmp_path / "..data").symlink_to(data.parent.name)
    for name, value in {
        "DATABASE_URL": "postgresql://backorder:file-db-pw@db/backorder",
        "BACKORDER_KAFKA_SASL_PASSWORD": SASL,
        "BACKORDER_KAFKA_CONFIG": json.dumps({"ssl.key.password": TLS, "security.protocol": "SSL"}),
    }.items():
        (data.parent / name).write_text(value + "\n")
        (tmp_path / name).symlink_to(Path("..data") / name)
    monkeypatch.setenv("BACKORDER_SECRETS_DIR", str(tmp_path))
    out = run_settings_command(capsys)
    assert SASL not in out and TLS not in out and "file-db-pw" not in out
    settings = Settings()
    assert settings.database_url.get_secret_value() == "postgresql://backorder:file-db-pw@db/backorder"
    assert producer_config(settings)["sasl.password"] == SASL
    assert consumer_config(settings)["ssl.key.password"] == TLS
    # A variable wins over a file.
    monkeypatch.setenv("BACKORDER_KAFKA_SASL_PASSWORD", "from-the-variable")
    assert admin_config(Settings())["sasl.password"] == "from-the-variable"


def test_a_secrets_dir_that_does_not_exist_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("BACKORDER_SECRETS_DIR", str(tmp_path / "missing"))
    assert main(["settings"]) == 2
    assert "BACKORDER_SECRETS_DIR" in capsys.readouterr().err


def test_the_default_secrets_dir_is_read_only_when_it_exists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().secrets_dir is None
    (tmp_path / "BACKORDER_KAFKA_SSL_KEY_PASSWORD").write_text(TLS)
    monkeypatch.setattr(settings_module, "DEFAULT_SECRETS_DIR", tmp_path)
    settings = Settings()
    assert settings.secrets_dir == tmp_path
    assert producer_config(settings)["ssl.key.password"] == TLS


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:p%40ss@db:5432/x", f"postgresql://u:{MASK}@db:5432/x"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("host=db user=u password=pw dbname=x", f"host=db user=u password={MASK} dbname=x"),
        ("host=db password='a b\\' c' dbname=x", f"host=db password={MASK} dbname=x"),
    ],
)
def test_the_database_url_is_shown_with_its_password_masked(url: str, shown: str) -> None:
    assert masked_database_url(url) == shown
