"""Plain-text renderings of customer notifications, for the e-mail team's reference.

The e-mail service renders the real messages from the `customer-notification` events; these templates
(worker/templates/<TYPE>.txt, `string.Template` syntax) show what each event is meant to say and
prove that every event carries what an e-mail needs.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from string import Template

from worker.domain.events import CustomerNotification, NotificationLine, NotificationType, event_id
from worker.domain.model import LineStatus

CANCEL_LINK = "{{cancel_link}}"  # filled in by the e-mail service


def sample(kind: NotificationType) -> CustomerNotification:
    """The notification the business documents' order 102 would get at that point of its timeline."""
    shipped = kind is NotificationType.ORDER_SHIPPED
    status = {
        NotificationType.BACKORDER_ALLOCATED: LineStatus.ALLOCATED,
        NotificationType.ORDER_SHIPPED: LineStatus.SHIPPED,
        NotificationType.BACKORDER_CANCELLED: LineStatus.CANCELLED,
        NotificationType.BACKORDER_REJECTED: LineStatus.REJECTED,
    }.get(kind, LineStatus.BACKORDERED)
    reason = {
        NotificationType.BACKORDER_STATUS_UPDATE: "day 7: still awaiting inventory",
        NotificationType.BACKORDER_ETA_CHANGED: "expected ship date 2026-02-20 -> 2026-03-06",
        NotificationType.BACKORDER_CANCELLED: "CUSTOMER_REQUEST; refund due",
        NotificationType.BACKORDER_REJECTED: "discontinued",
    }.get(kind)
    return CustomerNotification(
        event_id=event_id("preview", kind),
        occurred_at=dt.datetime(2026, 1, 8, 10, tzinfo=dt.UTC),
        order_id="102",
        customer_id="customer-102",
        type=kind,
        lines=(NotificationLine("1", "WIDGET-PRO-BLUE", "Widget Pro (blue)", 20, status),),
        cancel_allowed=kind not in (NotificationType.ORDER_SHIPPED, NotificationType.BACKORDER_CANCELLED),
        expected_ship_date=dt.date(2026, 3, 6)
        if kind is NotificationType.BACKORDER_ETA_CHANGED
        else dt.date(2026, 2, 21),
        carrier="DHL" if shipped else None,
        tracking_number="JD014600006281231234" if shipped else None,
        estimated_delivery=dt.date(2026, 2, 24) if shipped else None,
        reason=reason,
    )


def render(notification: CustomerNotification) -> str:
    template = resources.files("worker").joinpath("templates", f"{notification.type.value}.txt").read_text()
    items = "\n".join(
        f"  - {line.quantity} x {line.product_name} ({line.sku}): {line.status.value.lower()}"
        for line in notification.lines
    )
    return Template(template).substitute(
        order_id=notification.order_id,
        items=items,
        expected_ship_date=notification.expected_ship_date.strftime("%A %d %B %Y")
        if notification.expected_ship_date
        else "not known yet; we will tell you as soon as it is",
        carrier=notification.carrier or "",
        tracking_number=notification.tracking_number or "",
        estimated_delivery=notification.estimated_delivery.strftime("%A %d %B %Y")
        if notification.estimated_delivery
        else "",
        reason=notification.reason or "",
        cancel_link=CANCEL_LINK if notification.cancel_allowed else "(cancellation no longer possible)",
    )
