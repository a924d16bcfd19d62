"""The relay's round histograms: a round's values at once, the same figures as one by one; the group protocol; the
consumer lag of the partitions consumed."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tests import examples
from worker.adapters.metrics import _BATCH_BUCKETS, Metrics, RoundHistogram
from worker.service.handlers import SWEEP_STEPS

BOUNDS = (*_BATCH_BUCKETS, math.inf)
values = st.lists(
    st.one_of(st.sampled_from(_BATCH_BUCKETS), st.floats(-5, 100, allow_nan=False), st.just(math.inf)), max_size=60
)


@settings(max_examples=examples(300), deadline=None)
@given(rounds=st.lists(values, max_size=4))
def test_a_round_at_once_counts_what_its_values_one_by_one_count(rounds: list[list[float]]) -> None:
    at_once, one_by_one = CollectorRegistry(), CollectorRegistry()
    bulk = RoundHistogram("delay_seconds", "d", buckets=_BATCH_BUCKETS, registry=at_once)
    single = Histogram("delay_seconds", "d", buckets=_BATCH_BUCKETS, registry=one_by_one)
    for observed in rounds:
        bulk.observe_all(observed)
        for value in observed:
            single.observe(value)

    for bound in BOUNDS:
        labels = {"le": str(bound) if bound != math.inf else "+Inf"}
        assert at_once.get_sample_value("delay_seconds_bucket", labels) == one_by_one.get_sample_value(
            "delay_seconds_bucket", labels
        ), bound
    assert at_once.get_sample_value("delay_seconds_count") == one_by_one.get_sample_value("delay_seconds_count")
    total, expected = at_once.get_sample_value("delay_seconds_sum"), one_by_one.get_sample_value("delay_seconds_sum")
    assert total is not None and expected is not None
    assert total == expected or math.isclose(total, expected, rel_tol=1e-9, abs_tol=1e-9)


def test_the_group_protocol_a_worker_consumes_with_is_served_as_an_info_series() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.group_protocol("consumer")
    served = generate_latest(metrics.registry).decode()
    assert "# TYPE backorder_group_info gauge" in served
    assert 'backorder_group_info{protocol="consumer"} 1.0' in served


def stats(**lags: int) -> str:
    """librdkafka's statistics of the `orders` topic: each partition's consumer lag (-1: not consumed here)."""
    partitions = {partition.removeprefix("p"): {"consumer_lag": lag} for partition, lag in lags.items()}
    return json.dumps({"topics": {"orders": {"partitions": {"-1": {"consumer_lag": -1}, **partitions}}}})


def test_a_partition_no_longer_consumed_here_leaves_the_lag_gauge() -> None:
    metrics = Metrics(CollectorRegistry())

    def lag(partition: str) -> float | None:
        return metrics.registry.get_sample_value(
            "backorder_consumer_lag_messages", {"topic": "orders", "partition": partition}
        )

    metrics.consumer_statistics(stats(p0=5000, p1=3))
    assert (lag("0"), lag("1")) == (5000, 3)
    metrics.consumer_statistics(stats(p0=-1, p1=4))  # partition 0 revoked: reported, not consumed
    assert (lag("0"), lag("1")) == (None, 4)
    metrics.consumer_statistics(stats(p1=2))  # and no longer reported at all
    assert (lag("0"), lag("1")) == (None, 2)
    metrics.consumer_statistics(stats())
    assert lag("1") is None


def test_every_step_of_the_sweep_counts_its_failures_from_0() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.sweep_failed("dates")
    counted = {
        step: metrics.registry.get_sample_value("backorder_sweep_failures_total", {"step": step})
        for step in SWEEP_STEPS
    }
    assert counted == {"listing": 0, "release": 0, "stale": 0, "dates": 1, "status_updates": 0}
