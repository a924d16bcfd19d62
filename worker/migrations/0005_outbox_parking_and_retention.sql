-- Outbox rows Kafka refuses for good are parked (not retried, not blocking the rows behind them), and
-- every table hostile input can grow has a retention the relay's periodic purge applies with an index.

ALTER TABLE outbox
    ADD COLUMN failed_at timestamptz,   -- Kafka refused the row for good: parked, never published
    ADD COLUMN last_error text;

-- The relay's queue: rows neither published nor parked.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (outbox_id) WHERE published_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX outbox_parked ON outbox (failed_at) WHERE failed_at IS NOT NULL;

CREATE INDEX dead_letter_failed_at ON dead_letter (failed_at);

-- A cancellation's own requested_at comes from its producer; its age here is when the worker kept it.
ALTER TABLE pending_cancellation ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX pending_cancellation_recorded_at ON pending_cancellation (recorded_at);

-- Stock rows that hold nothing (created when an SKU was named, nothing ever received): purge candidates.
CREATE INDEX stock_level_empty ON stock_level (updated_at) WHERE available = 0 AND received_total = 0;
