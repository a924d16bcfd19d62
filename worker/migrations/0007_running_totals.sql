-- Running totals of what only grows (units allocated, lines cancelled by reason, orders by outcome, fill
-- times, ...): kept by every transaction that changes them, so that the state figures behind /metrics
-- cost the same at ten million lines as at a thousand. A transaction appends its deltas to state_delta
-- (no row that two workers would fight over); the state reader folds them into state_total.

CREATE TABLE state_total (
    name   text   NOT NULL,
    key    text   NOT NULL DEFAULT '',
    value  bigint NOT NULL,
    PRIMARY KEY (name, key)
);

CREATE TABLE state_delta (
    delta_id  bigserial PRIMARY KEY,
    name      text   NOT NULL,
    key       text   NOT NULL DEFAULT '',
    value     bigint NOT NULL
);

-- What the lines and orders written before this migration add up to. The fill-time buckets (seconds) are
-- those of worker/adapters/postgres/totals.py (FILL_BUCKETS_SECONDS).
INSERT INTO state_total (name, key, value)
SELECT 'units_allocated', '', coalesce(sum(quantity_allocated), 0) FROM order_line
UNION ALL SELECT 'units_reserved', '', coalesce(sum(quantity_reserved), 0) FROM order_line
UNION ALL SELECT 'units_rejected', '', coalesce(sum(quantity_rejected), 0) FROM order_line
UNION ALL SELECT 'backordered_lines', '', count(*) FROM order_line WHERE backordered
UNION ALL SELECT 'cancelled_lines', cancel_reason, count(*) FROM order_line WHERE cancel_reason IS NOT NULL
    GROUP BY cancel_reason
UNION ALL SELECT 'orders', outcome, count(*) FROM customer_order WHERE outcome IS NOT NULL GROUP BY outcome;

INSERT INTO state_total (name, key, value)
SELECT h.name, b.bound::text, count(*) FILTER (WHERE h.d <= b.bound)
FROM (SELECT 'fill_to_allocation' AS name, extract(epoch FROM filled_at - placed_at) AS d
      FROM order_line WHERE backordered AND filled_at IS NOT NULL
      UNION ALL
      SELECT 'fill_to_shipment', extract(epoch FROM shipped_at - placed_at)
      FROM order_line WHERE backordered AND shipped_at IS NOT NULL) AS h
CROSS JOIN unnest(ARRAY[3600, 21600, 43200, 86400, 172800, 259200, 432000, 604800, 864000, 1209600, 1814400,
                        2592000, 3888000, 5184000]) AS b(bound)
GROUP BY h.name, b.bound
UNION ALL
SELECT h.name, k.key, CASE k.key WHEN 'count' THEN count(*) ELSE coalesce(sum(round(h.d * 1000)), 0) END
FROM (SELECT 'fill_to_allocation' AS name, extract(epoch FROM filled_at - placed_at) AS d
      FROM order_line WHERE backordered AND filled_at IS NOT NULL
      UNION ALL
      SELECT 'fill_to_shipment', extract(epoch FROM shipped_at - placed_at)
      FROM order_line WHERE backordered AND shipped_at IS NOT NULL) AS h
CROSS JOIN (VALUES ('count'), ('sum_ms')) AS k(key)
GROUP BY h.name, k.key;
