"""The worker's configuration: read once from the environment into one frozen object.

`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` keep their conventional names; everything else is
`BACKORDER_<FIELD NAME>`. Each field is documented in the README's configuration table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.domain.model import PaymentTiming

KafkaConfig = dict[str, str | int | float | bool]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKORDER_", frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "BACKORDER_KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/backorder"),
        validation_alias=AliasChoices("DATABASE_URL", "BACKORDER_DATABASE_URL"),
    )

    group_id: str = "backorder-worker"
    topic_order_created: str = "order-created"
    topic_inventory_received: str = "inventory-received"
    topic_fulfillment_requested: str = "fulfillment-requested"
    topic_customer_notification: str = "customer-notification"
    topic_backorder_status: str = "backorder-status"
    topic_dead_letter: str = "backorder-worker.dlq"
    topic_partitions: PositiveInt = 6
    topic_replication_factor: PositiveInt = 1

    # librdkafka options passed through as JSON objects, e.g. '{"security.protocol": "SASL_SSL"}'.
    kafka_config: KafkaConfig = Field(default_factory=dict)
    kafka_consumer_config: KafkaConfig = Field(default_factory=dict)
    kafka_producer_config: KafkaConfig = Field(default_factory=dict)

    payment_timing: PaymentTiming = PaymentTiming.AT_ORDER

    batch_size: PositiveInt = 500
    batch_timeout_seconds: PositiveFloat = 0.5

    db_pool_min_size: PositiveInt = 1
    db_pool_max_size: PositiveInt = 4
    db_retry_initial_seconds: PositiveFloat = 0.5
    db_retry_max_seconds: PositiveFloat = 30.0

    relay_enabled: bool = True
    relay_batch_size: PositiveInt = 1000
    relay_interval_seconds: PositiveFloat = 0.2
    relay_delivery_timeout_seconds: PositiveFloat = 30.0
    outbox_retention_hours: PositiveFloat = 24.0

    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9108, ge=0, le=65535)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    shutdown_timeout_seconds: PositiveFloat = 30.0

    @property
    def inbound_topics(self) -> dict[str, str]:
        """Inbound topic name -> the Avro record the contract puts on it."""
        return {
            self.topic_order_created: "backorder.OrderCreated",
            self.topic_inventory_received: "backorder.InventoryReceived",
        }
