"""Every notification type renders as the e-mail the business documents describe."""

from __future__ import annotations

import dataclasses

import pytest

from worker.domain.events import NotificationType
from worker.entrypoints.cli import main
from worker.entrypoints.preview import render, sample

EXPECTED = {
    NotificationType.BACKORDER_CONFIRMED: [
        "Subject: Your order 102 is confirmed",
        "Saturday 21 February 2026",
        "{{cancel_link}}",
    ],
    NotificationType.BACKORDER_STATUS_UPDATE: [
        "still awaiting inventory",
        "Saturday 21 February 2026",
        "{{cancel_link}}",
    ],
    NotificationType.BACKORDER_ETA_CHANGED: ["Now expected to ship: Friday 06 March 2026", "{{cancel_link}}"],
    NotificationType.BACKORDER_ALLOCATED: ["being prepared for shipment"],
    NotificationType.ORDER_SHIPPED: [
        "Carrier: DHL",
        "Tracking number: JD014600006281231234",
        "Estimated delivery: Tuesday 24 February 2026",
    ],
    NotificationType.BACKORDER_CANCELLED: ["Reason: CUSTOMER_REQUEST; refund due"],
    NotificationType.BACKORDER_REJECTED: ["Reason: discontinued"],
}


@pytest.mark.parametrize("kind", list(NotificationType))
def test_each_notification_renders_with_its_item_and_what_the_customer_needs(kind: NotificationType) -> None:
    text = render(sample(kind))
    assert text.startswith("Subject: ")
    assert "20 x Widget Pro (blue) (WIDGET-PRO-BLUE)" in text
    for phrase in EXPECTED[kind]:
        assert phrase in text
    assert "$" not in text  # every placeholder was filled


def test_the_preview_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "ORDER_SHIPPED"]) == 0
    assert "Subject: Your order 102 has shipped" in capsys.readouterr().out


def test_a_confirmation_says_why_its_date_is_what_it_is() -> None:
    # a pre-order's, or a backorder's whose date is unknown: the customer reads the reason the notice carries
    for reason in ("pre-order: nothing ships before the release on 2026-03-01", "expected ship date unknown"):
        confirmed = dataclasses.replace(sample(NotificationType.BACKORDER_CONFIRMED), reason=reason)
        assert reason in render(confirmed)
