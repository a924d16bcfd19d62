"""The worker's configuration: read once from the environment into one frozen object.

`KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` keep their conventional names; everything else is
`BACKORDER_<FIELD NAME>`. Each field is documented in the README's configuration table.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from worker.domain.allocation import ShipCompleteMode
from worker.domain.eta import EtaRules, UnreliableSupplier
from worker.domain.model import PaymentTiming, SplitPreference
from worker.domain.policy import ProductPolicy, ShipCompleteScope, ShopPolicy
from worker.domain.priority import DEFAULT_RANKS, Criterion, PriorityRules
from worker.domain.timeline import Cadence
from worker.service import limits

KafkaConfig = dict[str, str | int | float | bool]

# Where Kubernetes (or Docker) mounts the worker's secrets, one file per setting named like its variable.
DEFAULT_SECRETS_DIR = Path("/run/secrets/backorder-worker")
MASK = "**********"
# librdkafka options whose values are secrets; any option whose name has one of SECRET_WORDS is one too.
SECRET_KAFKA_OPTIONS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.oauthbearer.assertion.private.key.passphrase",
    }
)
SECRET_WORDS = ("password", "passphrase", "secret", "token", "credential", "private")


def is_secret_option(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_KAFKA_OPTIONS or any(word in lowered for word in SECRET_WORDS)


def masked(config: KafkaConfig) -> KafkaConfig:
    """The librdkafka options with every secret value replaced by a mask, for printing."""
    return {name: MASK if is_secret_option(name) else value for name, value in config.items()}


def masked_database_url(url: str) -> str:
    """The connection URL or key=value string with its password masked, the rest as it is."""
    url = re.sub(r"^(\w[\w+.-]*://[^:/@?#]*:)[^@/?#]*@", rf"\g<1>{MASK}@", url)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", rf"\g<1>{MASK}", url, flags=re.IGNORECASE)


def masked_user_info(user_info: str) -> str:
    """`user:password` with the password masked, as the database URL's is."""
    user, sep, _password = user_info.partition(":")
    return f"{user}{sep}{MASK}" if sep else MASK


def _default_secrets_dir() -> Path | None:
    return DEFAULT_SECRETS_DIR if DEFAULT_SECRETS_DIR.is_dir() else None


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
    topic_order_cancelled: str = "order-cancelled"
    topic_product_policy: str = "product-policy"
    topic_restock_expected: str = "restock-expected"
    topic_shipment_dispatched: str = "shipment-dispatched"
    topic_fulfillment_requested: str = "fulfillment-requested"
    topic_customer_notification: str = "customer-notification"
    topic_backorder_status: str = "backorder-status"
    topic_dead_letter: str = "backorder-worker.dlq"
    topic_partitions: PositiveInt = 6
    topic_replication_factor: PositiveInt = 1

    # librdkafka options passed through as JSON objects, e.g. '{"security.protocol": "SASL_SSL"}'.
    # Secret values among them are masked in `settings`, in repr() and in every dump.
    kafka_config: KafkaConfig = Field(default_factory=dict, repr=False)
    kafka_consumer_config: KafkaConfig = Field(default_factory=dict, repr=False)
    kafka_producer_config: KafkaConfig = Field(default_factory=dict, repr=False)
    # Kafka secrets kept out of the JSON above (a variable each, or a file in secrets_dir), given to every client.
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_sasl_oauthbearer_client_secret: SecretStr | None = None
    # Schema Registry (Confluent API): unset, events are in Avro single-object encoding; set, outbound events
    # use the Confluent framing under `<topic>-value` and inbound messages may come in either framing.
    schema_registry_url: str | None = None
    schema_registry_basic_auth_user_info: SecretStr | None = None  # "user:password"
    schema_registry_ca_location: str | None = None  # a CA bundle file (or folder) to verify the registry's TLS
    schema_registry_timeout_seconds: PositiveFloat = 5.0  # per request: a registry that hangs never hangs the worker
    # A folder with one file per setting, named like its variable (Kubernetes' secret volumes); variables win.
    secrets_dir: Path | None = Field(default_factory=_default_secrets_dir)

    # The shop's backorder policy: what an SKU without a product-policy event gets.
    payment_timing: PaymentTiming = PaymentTiming.AT_ORDER
    backorders_allowed: bool = True
    max_backorder_qty_per_customer: NonNegativeInt | None = None
    default_split: SplitPreference = SplitPreference.SHIP_AVAILABLE_NOW
    refuse_backorders_without_restock: bool = False
    # When not to take a backorder: one expected to ship more than this many days after the order (a product's
    # own max_promise_days wins; unset: no limit), and one whose date rests on a supplier on time for less than
    # this share of its last deliveries (unset: never), which is refused or given a wider margin.
    max_promise_days: int | None = Field(default=None, ge=1, le=limits.MAX_POLICY_DAYS)
    supplier_min_on_time_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    unreliable_supplier: UnreliableSupplier = UnreliableSupplier.WIDEN

    # Priority: criteria in rank order, e.g. "need_by,expedited,vip,wholesale,standard".
    priority_ranks: Annotated[tuple[Criterion, ...], NoDecode] = DEFAULT_RANKS
    priority_need_by_days: int = Field(default=3, ge=0, le=limits.MAX_POLICY_DAYS)
    priority_large_order_units: PositiveInt | None = None
    starvation_days: float = Field(default=14.0, ge=0, le=limits.MAX_POLICY_DAYS, allow_inf_nan=False)  # 0: never
    ship_complete_mode: ShipCompleteMode = ShipCompleteMode.HOLD
    ship_complete_scope: ShipCompleteScope = ShipCompleteScope.LINE

    # Expected ship dates and the customer timeline.
    # Days are bounded as the events' days are (limits.MAX_POLICY_DAYS): added to dates, more would overflow them.
    lead_time_days: int | None = Field(default=None, ge=1, le=limits.MAX_POLICY_DAYS)
    stale_after_days: int | None = Field(default=None, ge=1, le=limits.MAX_POLICY_DAYS)
    eta_handling_days: int = Field(default=1, ge=0, le=limits.MAX_POLICY_DAYS)
    supplier_margin_days: int = Field(default=2, ge=0, le=limits.MAX_POLICY_DAYS)
    eta_change_days: int = Field(default=3, ge=0, le=limits.MAX_POLICY_DAYS)
    status_update_days: Annotated[tuple[Annotated[int, Field(ge=1, le=limits.MAX_POLICY_DAYS)], ...], NoDecode] = (
        7,
        14,
    )
    status_update_every_days: int = Field(default=7, ge=1, le=limits.MAX_POLICY_DAYS)
    # 0: this instance never sweeps on its own
    sweep_interval_seconds: float = Field(default=300.0, ge=0, allow_inf_nan=False)

    batch_size: PositiveInt = 500
    batch_timeout_seconds: PositiveFloat = 0.5
    # A batch is applied in transactions of at most this many order lines (a larger order alone); a receipt
    # that fills more lines than this gives them in steps of about as many, a transaction each.
    transaction_max_lines: PositiveInt = 5000

    db_pool_min_size: PositiveInt = 1
    db_pool_max_size: PositiveInt = 6
    db_retry_initial_seconds: PositiveFloat = 0.5
    db_retry_max_seconds: PositiveFloat = 30.0

    relay_enabled: bool = True
    relay_batch_size: PositiveInt = 10_000
    # A round also stops once its keys and values reach this many bytes (the row that crosses it included).
    relay_batch_bytes: PositiveInt = 16 * 1024 * 1024
    relay_interval_seconds: PositiveFloat = 0.2
    relay_delivery_timeout_seconds: PositiveFloat = 30.0
    outbox_parked_retention_hours: PositiveFloat = 168.0  # rows Kafka refused, kept for an operator to look at
    dead_letter_retention_days: PositiveFloat = 30.0
    pending_cancellation_retention_days: PositiveFloat = 30.0
    state_refresh_seconds: PositiveFloat = 15.0  # how often the backlog state behind /metrics is read

    metrics_host: str = "127.0.0.1"  # containers set 0.0.0.0 (see the README on the bind address)
    metrics_port: int = Field(default=9108, ge=0, le=65535)

    # The promise API (`backorder-worker serve`): where it listens, its own small pool, its bounds.
    promise_host: str = "127.0.0.1"  # containers set 0.0.0.0
    promise_port: int = Field(default=8080, ge=0, le=65535)
    promise_pool_size: PositiveInt = 4  # connections kept open: at most this many promises read at once
    # A request waits at most this long for a connection, each statement runs at most this long, a body
    # must arrive within it: past it the answer is 503 (or 408), never a hung request.
    promise_timeout_seconds: PositiveFloat = 2.0
    promise_max_concurrency: PositiveInt = 100  # connections and requests in flight; beyond: 503 at once
    # Kept in memory across promises: copies of what was read of each SKU, used while unchanged; one per SKU
    # plus one per waiting line; 0: none kept.
    promise_cache_lines: int = Field(default=200_000, ge=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    shutdown_timeout_seconds: PositiveFloat = 30.0
    liveness_seconds: PositiveFloat = 120.0  # /healthz fails when the consume loop has not polled for this long
    # A background loop (relay, sweep) that has not come round for this long is stuck: /healthz fails, the worker exits.
    loop_stall_seconds: PositiveFloat = 120.0

    # The consumer group protocol: `classic` (the client-side cooperative-sticky assignor, any broker), `consumer`
    # (KIP-848, Kafka 4.0 and later: the broker assigns every topic's partitions in ranges across the workers,
    # incrementally, and keeps the session and the heartbeat below as the group's configuration), or `auto`:
    # `consumer` where the brokers run KIP-848 groups and take the session below, else `classic`.
    group_protocol: Literal["auto", "classic", "consumer"] = "auto"
    # Consumer group membership: how fast the group notices a member that died (librdkafka defaults: 45 s, 3 s).
    session_timeout_seconds: float = Field(default=10.0, ge=6.0, le=1800.0)  # the broker's default bounds
    # The survivors learn of a rebalance at their next heartbeat: 1 s rather than 3 s saves up to 2 s of recovery.
    heartbeat_interval_seconds: float = Field(default=1.0, ge=0.1, le=600.0)
    # Static membership (`group.instance.id`), e.g. the pod name: a restart within the session timeout keeps
    # the member's partitions without a rebalance. Unset: dynamic membership.
    group_instance_id: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The folder is itself a setting, so it is read from the environment before the others.
        named = os.environ.get("BACKORDER_SECRETS_DIR", "").strip()
        if named and not Path(named).is_dir():
            raise SettingsError(f"BACKORDER_SECRETS_DIR={named} is not a directory")
        directory = Path(named) if named else _default_secrets_dir()
        if directory is None:
            return init_settings, env_settings
        return init_settings, env_settings, SecretsSettingsSource(settings_cls, secrets_dir=directory)

    @field_validator("secrets_dir", mode="before")
    @classmethod
    def _blank_dir_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_serializer("kafka_config", "kafka_consumer_config", "kafka_producer_config")
    def _mask_kafka_secrets(self, config: KafkaConfig) -> KafkaConfig:
        return masked(config)

    def kafka_client_config(self) -> KafkaConfig:
        """BACKORDER_KAFKA_CONFIG with the secrets given apart merged in: the options every client gets."""
        secrets: dict[str, SecretStr | None] = {
            "sasl.password": self.kafka_sasl_password,
            "ssl.key.password": self.kafka_ssl_key_password,
            "sasl.oauthbearer.client.secret": self.kafka_sasl_oauthbearer_client_secret,
        }
        given: dict[str, Any] = {name: value.get_secret_value() for name, value in secrets.items() if value}
        return {**self.kafka_config, **given}

    @field_validator("priority_ranks", "status_update_days", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("group_instance_id", "schema_registry_url", "schema_registry_ca_location", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Settings:
        if self.heartbeat_interval_seconds >= self.session_timeout_seconds:
            raise ValueError("heartbeat_interval_seconds must be below session_timeout_seconds")
        return self

    @model_validator(mode="after")
    def _rules_hold(self) -> Settings:
        """What the rules refuse of the settings (a criterion ranked twice, status-update days not increasing) is
        refused here, as any other bad value, not when the worker first builds them."""
        self.shop_policy()
        return self

    @property
    def inbound_topics(self) -> dict[str, str]:
        """Inbound topic name -> the Avro record the contract puts on it."""
        return {
            self.topic_order_created: "backorder.OrderCreated",
            self.topic_inventory_received: "backorder.InventoryReceived",
            self.topic_order_cancelled: "backorder.OrderCancelled",
            self.topic_product_policy: "backorder.ProductPolicy",
            self.topic_restock_expected: "backorder.RestockExpected",
            self.topic_shipment_dispatched: "backorder.ShipmentDispatched",
        }

    @property
    def outbound_topics(self) -> dict[str, str]:
        """Outbound event topic name -> the Avro record the contract puts on it (dead letters aside)."""
        return {
            self.topic_fulfillment_requested: "backorder.FulfillmentRequested",
            self.topic_customer_notification: "backorder.CustomerNotification",
            self.topic_backorder_status: "backorder.BackorderStatusChanged",
        }

    def shop_policy(self) -> ShopPolicy:
        return ShopPolicy(
            product=ProductPolicy(
                backorders_allowed=self.backorders_allowed,
                max_backorder_qty_per_customer=self.max_backorder_qty_per_customer,
                payment_timing=self.payment_timing,
                default_split=self.default_split,
                lead_time_days=self.lead_time_days,
                stale_after_days=self.stale_after_days,
                max_promise_days=self.max_promise_days,
            ),
            priority=PriorityRules(
                ranks=self.priority_ranks,
                need_by_within_days=self.priority_need_by_days,
                large_order_units=self.priority_large_order_units,
                starvation_after=dt.timedelta(days=self.starvation_days) if self.starvation_days else None,
            ),
            ship_complete_mode=self.ship_complete_mode,
            ship_complete_scope=self.ship_complete_scope,
            refuse_without_restock=self.refuse_backorders_without_restock,
            eta=EtaRules(
                handling_days=self.eta_handling_days,
                default_supplier_margin_days=self.supplier_margin_days,
                later_by_days=self.eta_change_days,
                min_on_time_ratio=self.supplier_min_on_time_ratio,
                unreliable_supplier=self.unreliable_supplier,
            ),
            cadence=Cadence(days=self.status_update_days, every_days=self.status_update_every_days),
        )
