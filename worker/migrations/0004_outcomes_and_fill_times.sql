-- What the business watches: each order's outcome when placed (the backorder rate), and when a
-- backordered line was filled (the fill time).

ALTER TABLE customer_order ADD COLUMN outcome text;  -- IN_STOCK, PARTLY_BACKORDERED, FULLY_BACKORDERED, REJECTED
CREATE INDEX customer_order_outcome ON customer_order (outcome);

ALTER TABLE order_line
    ADD COLUMN backordered boolean NOT NULL DEFAULT false,  -- it waited for stock when the order was placed
    ADD COLUMN filled_at timestamptz;  -- when every unit it wants was set aside for it

-- When the inbound event that caused an outbound one was written to Kafka: end-to-end latency.
ALTER TABLE outbox ADD COLUMN source_time timestamptz;
