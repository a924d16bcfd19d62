-- Priority-aware allocation: split shipments (reserved units), product policy (rejected units),
-- cancellations, and why each allocation was made.

ALTER TABLE customer_order ADD COLUMN order_units integer;
UPDATE customer_order o SET order_units = (SELECT sum(quantity) FROM order_line l WHERE l.order_id = o.order_id);
ALTER TABLE customer_order ALTER COLUMN order_units SET NOT NULL;
CREATE INDEX customer_order_customer ON customer_order (customer_id);

-- Where a line's units are: allocated (on their way), reserved (held until the line or order can ship
-- complete), rejected (refused by policy), cancelled; the rest waits.
ALTER TABLE order_line
    ADD COLUMN split text NOT NULL DEFAULT 'SHIP_AVAILABLE_NOW',
    ADD COLUMN quantity_reserved integer NOT NULL DEFAULT 0,
    ADD COLUMN quantity_rejected integer NOT NULL DEFAULT 0,
    ADD COLUMN quantity_cancelled integer NOT NULL DEFAULT 0,
    ADD COLUMN status_reason text,
    ADD COLUMN cancel_reason text,
    DROP CONSTRAINT order_line_check,
    ADD CONSTRAINT order_line_units CHECK (
        quantity_allocated >= 0 AND quantity_reserved >= 0 AND quantity_rejected >= 0 AND quantity_cancelled >= 0
        AND quantity_allocated + quantity_reserved + quantity_rejected + quantity_cancelled <= quantity);

-- Allocated units are the lines' business now; the ledger keeps what is free and what came in.
ALTER TABLE stock_level DROP COLUMN allocated_total;

-- Every decision: units given (quantity), of them reserved, units released to shipping (shipped,
-- which for a line that completes includes what it had reserved), and the priority that won.
ALTER TABLE allocation
    ADD COLUMN reserved integer NOT NULL DEFAULT 0,
    ADD COLUMN shipped integer NOT NULL DEFAULT 0,
    ADD COLUMN rank integer,
    ADD COLUMN reason text,
    ALTER COLUMN shipment_id DROP NOT NULL,
    DROP CONSTRAINT allocation_quantity_check,
    ADD CONSTRAINT allocation_units CHECK (quantity >= 0 AND reserved >= 0 AND shipped >= 0);
UPDATE allocation SET shipped = quantity;
CREATE INDEX allocation_order ON allocation (order_id);

CREATE TABLE product_policy (
    sku                             text PRIMARY KEY,
    backorders_allowed              boolean NOT NULL,
    discontinued                    boolean NOT NULL,
    max_backorder_qty_per_customer  integer,
    payment_timing                  text NOT NULL,
    default_split                   text NOT NULL,
    lead_time_days                  integer,
    stale_after_days                integer,
    decided_at                      timestamptz NOT NULL,
    event_id                        text NOT NULL,
    recorded_at                     timestamptz NOT NULL DEFAULT now()
);

-- A cancellation that arrived before its order; applied when the order arrives.
CREATE TABLE pending_cancellation (
    order_id      text NOT NULL,
    event_id      text NOT NULL,
    line_ids      text[] NOT NULL,
    reason        text NOT NULL,
    note          text,
    requested_at  timestamptz NOT NULL,
    PRIMARY KEY (order_id, event_id)
);
