"""Prometheus metrics: the one place that knows prometheus_client.

Counters and histograms describe this process's work. The state of the backlog (open backorders,
outbox backlog) is read from PostgreSQL by a thread of its own every few seconds (`StateRefresher`,
on a connection outside the worker's pool) and a scrape serves the last figures read, so scrapers
never compete with the consume loop. Every instance reports the same, correct figure whatever
happened to the others; aggregate those with max(), not sum().
"""

from __future__ import annotations

import json
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.domain.model import CancelReason, OrderOutcome
from worker.service.batch import MessageResult
from worker.service.handlers import SWEEP_STEPS, Outcome
from worker.service.ports import StateFigures

log = structlog.get_logger(__name__)

_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RoundHistogram(Histogram):
    """A histogram that also takes a relay round's observations at once (`observe_all`): each bucket's count and
    the sum are added once, where `observe` takes a lock for the sum and another for the bucket of every value
    (with the loop around it, 1-2 us a value: two values an event were a fifth of the relay's CPU). The same
    figures as observing the values one by one (tests/unit/test_metrics.py); written against prometheus-client's
    `Histogram` as pinned (its `_upper_bounds`, `_buckets` and `_sum`)."""

    def observe_all(self, values: Sequence[float]) -> None:
        if not values:
            return
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        bounds = self._upper_bounds
        counts = [0] * len(bounds)
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bound not below it: `observe`'s `amount <= bound`
        self._sum.inc(sum(values))
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


class StateRefresher:
    """Reads the backlog state every `interval_s` in one thread; scrapes only look at the last figures."""

    def __init__(self, read: Callable[[], StateFigures], interval_s: float) -> None:
        self._read = read
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._figures: StateFigures | None = None
        self._read_at: float | None = None  # time.monotonic() of the last successful read
        self._ok = False

    def refresh(self) -> None:
        try:
            figures = self._read()
        except Exception as exc:  # the figures go missing until the database answers again
            log.warning("state_query_failed", error=f"{type(exc).__name__}: {exc}")
            with self._lock:
                self._ok = False
            return
        with self._lock:
            self._figures, self._read_at, self._ok = figures, time.monotonic(), True

    def latest(self) -> tuple[StateFigures | None, float | None]:
        """The figures of the last refresh if it succeeded (else None), and their age in seconds."""
        with self._lock:
            age = None if self._read_at is None else time.monotonic() - self._read_at
            return (self._figures if self._ok else None), age

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval_s):
            self.refresh()


class _StateCollector(Collector):
    def __init__(self, state: StateRefresher) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        figures, age = self._state.latest()
        if age is not None:
            yield GaugeMetricFamily(
                "backorder_state_age_seconds", "Age of the last backlog state read from the database", value=age
            )
        yield GaugeMetricFamily(
            "backorder_state_query_ok",
            "1 if the last refresh could read the backlog state from the database",
            value=0 if figures is None else 1,
        )
        if figures is None:
            return
        yield GaugeMetricFamily(
            "backorder_outbox_backlog", "Outbox rows not yet published to Kafka", value=figures.outbox_backlog
        )
        yield GaugeMetricFamily(
            "backorder_outbox_parked",
            "Outbox rows Kafka refused for good, kept until their retention",
            value=figures.outbox_parked,
        )
        yield GaugeMetricFamily(
            "backorder_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row",
            value=figures.outbox_oldest_age_seconds,
        )
        yield GaugeMetricFamily(
            "backorder_plan_steps_left",
            "Steps of deep receipts' plans not given yet (their units promised to named lines, off the shelf)",
            value=figures.plan_steps_left,
        )
        yield GaugeMetricFamily(
            "backorder_plan_oldest_age_seconds",
            "Age of the oldest step of a deep receipt's plan not given yet",
            value=figures.plan_oldest_age_seconds,
        )
        yield GaugeMetricFamily(
            "backorder_open_lines", "Order lines waiting for stock", value=figures.open_backorder_lines
        )
        yield GaugeMetricFamily(
            "backorder_open_units", "Units ordered and waiting for stock", value=figures.open_backorder_units
        )
        yield CounterMetricFamily(
            "backorder_units_received", "Units received into stock, all time", value=figures.units_received
        )
        yield CounterMetricFamily(
            "backorder_units_allocated",
            "Units allocated to order lines for shipment, all time",
            value=figures.units_allocated,
        )
        yield GaugeMetricFamily(
            "backorder_units_reserved", "Units held for lines that ship complete", value=figures.units_reserved
        )
        yield CounterMetricFamily(
            "backorder_units_rejected", "Units refused by backorder policy, all time", value=figures.units_rejected
        )
        orders = CounterMetricFamily(
            "backorder_orders", "Orders placed, by how they fared when placed", labels=["outcome"]
        )
        for outcome in OrderOutcome:
            orders.add_metric([outcome.value], figures.orders_by_outcome.get(outcome.value, 0))
        yield orders
        yield CounterMetricFamily(
            "backorder_backordered_lines",
            "Order lines that had to wait for stock when placed",
            value=figures.backordered_lines,
        )
        yield GaugeMetricFamily(
            "backorder_open_orders", "Orders with lines waiting for stock", value=figures.open_backorder_orders
        )
        value = GaugeMetricFamily(
            "backorder_open_value_minor",
            "Value of the units waiting for stock, in the currency's minor unit",
            labels=["currency"],
        )
        for currency, amount in sorted(figures.open_value_minor_by_currency.items()):
            value.add_metric([currency], float(amount))
        yield value
        yield GaugeMetricFamily(
            "backorder_oldest_open_age_seconds",
            "Age of the oldest order line waiting for stock",
            value=figures.oldest_open_age_seconds,
        )
        yield GaugeMetricFamily(
            "backorder_open_lines_expected_within_7_days",
            "Waiting order lines expected to ship within 7 days",
            value=figures.open_lines_expected_within_7_days,
        )
        for name, help_text, histogram in (
            (
                "backorder_fill_to_allocation_seconds",
                "From order to every unit set aside, for lines that waited",
                figures.fill_to_allocation,
            ),
            (
                "backorder_fill_to_shipment_seconds",
                "From order to shipped, for lines that waited",
                figures.fill_to_shipment,
            ),
        ):
            family = HistogramMetricFamily(name, help_text)
            family.add_metric(
                [],
                [(f"{b:.1f}", c) for b, c in histogram.buckets] + [("+Inf", histogram.count)],
                histogram.total_seconds,
            )
            yield family
        cancelled = CounterMetricFamily(
            "backorder_cancelled_lines", "Order lines cancelled, by reason", labels=["reason"]
        )
        for reason in CancelReason:  # every reason from the start, so that rates see the first one
            cancelled.add_metric([reason.value], figures.cancelled_lines_by_reason.get(reason.value, 0))
        yield cancelled


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series: noise nobody charts
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.events = Counter(
            "backorder_events_consumed",
            "Inbound events handled, by topic and outcome",
            ["topic", "outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "backorder_dead_letters",
            "Messages sent to the dead-letter topic, by reason",
            ["topic", "error_class"],
            registry=self.registry,
        )
        self.batch_duration = Histogram(
            "backorder_batch_duration_seconds",
            "Time to handle one polled batch in its database transaction",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "backorder_batch_size_messages",
            "Messages in one polled batch",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000),
            registry=self.registry,
        )
        self.database_retries = Counter(
            "backorder_database_retries",
            "Batches retried because the database was unavailable",
            registry=self.registry,
        )
        self.conflicts = Counter(
            "backorder_transaction_conflicts",
            "Batches retried at once because their transaction lost a deadlock or serialization conflict",
            registry=self.registry,
        )
        self.published = Counter(
            "backorder_outbox_published",
            "Outbox events acknowledged by Kafka, by topic",
            ["topic"],
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "backorder_outbox_publish_failures",
            "Outbox events Kafka did not acknowledge (retried later)",
            registry=self.registry,
        )
        self.outbox_failed = Counter(
            "backorder_outbox_failed",
            "Outbox events Kafka refused for good and that were parked, by topic and reason",
            ["topic", "reason"],
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "backorder_consumer_lag_messages",
            "Messages behind the end of each partition",
            ["topic", "partition"],
            registry=self.registry,
        )
        self._lag_labels: set[tuple[str, str]] = set()
        self.publish_delay = RoundHistogram(
            "backorder_outbox_publish_delay_seconds",
            "From the decision (outbox row written) to Kafka's acknowledgement",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.end_to_end = RoundHistogram(
            "backorder_end_to_end_latency_seconds",
            "From the inbound event entering Kafka to the outbound event it caused being acknowledged",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rebalances = Counter(
            "backorder_rebalances", "Partition assignments and revocations", ["kind"], registry=self.registry
        )
        self.sweep_failures = Counter(
            "backorder_sweep_failures",
            "Sweep transactions that failed (a defect) and were skipped, by step",
            ["step"],
            registry=self.registry,
        )
        for step in SWEEP_STEPS:  # from 0, so that the first failure alerts
            self.sweep_failures.labels(step)
        self.group = Info(
            "backorder_group", "The consumer group protocol this worker consumes with", registry=self.registry
        )

    def group_protocol(self, protocol: str) -> None:
        """The protocol the worker consumes with (for `auto`, the one it chose at start)."""
        self.group.info({"protocol": protocol})

    def consumer_statistics(self, stats_json: str) -> None:
        """librdkafka's statistics callback: the consumer lag of each partition consumed. A partition no longer
        consumed here (revoked, lost) leaves the gauge: its last lag would stay beside its new owner's, and the
        group's sum would count it twice."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        lags = {
            (topic, partition): lag
            for topic, data in stats.get("topics", {}).items()
            for partition, p in data.get("partitions", {}).items()
            if partition != "-1" and (lag := p.get("consumer_lag", -1)) >= 0
        }
        for labels in self._lag_labels - lags.keys():
            self.consumer_lag.remove(*labels)
        for labels, lag in lags.items():
            self.consumer_lag.labels(*labels).set(lag)
        self._lag_labels = set(lags)

    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        def in_use() -> float:
            s = stats()
            return float(s.get("pool_size", 0) - s.get("pool_available", 0))

        Gauge(
            "backorder_db_connections_in_use", "Database connections checked out of the pool", registry=self.registry
        ).set_function(in_use)

    def watch_state(self, state: StateRefresher) -> None:
        self.registry.register(_StateCollector(state))

    def outbound_topics(self, topics: Iterable[str], reasons: Iterable[str]) -> None:
        """Every (topic, reason) of the failures counter from the start at 0, so that the first one alerts."""
        reasons = tuple(reasons)
        for topic in topics:
            for reason in reasons:
                self.outbox_failed.labels(topic, reason)

    def sweep_failed(self, step: str) -> None:
        self.sweep_failures.labels(step).inc()

    def outbox_refused(self, topic: str, reason: str) -> None:
        self.outbox_failed.labels(topic, reason).inc()

    def batch_handled(self, results: Sequence[MessageResult], seconds: float) -> None:
        self.batch_duration.observe(seconds)
        self.batch_size.observe(len(results))
        for result in results:
            self.events.labels(result.message.topic, result.outcome.value).inc()
            if result.outcome is Outcome.DEAD_LETTERED:
                self.dead_letters.labels(result.message.topic, type(result.error).__name__).inc()

    def outbox_published(
        self, per_topic: dict[str, int], failures: int, delays: Sequence[float] = (), latencies: Sequence[float] = ()
    ) -> None:
        for topic, count in per_topic.items():
            self.published.labels(topic).inc(count)
        self.publish_delay.observe_all(delays)
        self.end_to_end.observe_all(latencies)
        if failures:
            self.publish_failures.inc(failures)
