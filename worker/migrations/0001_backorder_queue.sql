-- The stock ledger, orders and their lines (the backorder queue), receipts, allocations,
-- the outbox of events to publish, and the record of dead letters.

-- Every inbound fact accepted, by its natural key: the same key again with the same content is a
-- duplicate (ignored), with other content a conflict (dead-lettered).
CREATE TABLE inbound_fact (
    kind          text NOT NULL,
    natural_key   text NOT NULL,
    event_id      text NOT NULL,
    content_hash  bytea NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, natural_key)
);

CREATE TABLE stock_level (
    sku              text PRIMARY KEY,
    available        integer NOT NULL DEFAULT 0 CHECK (available >= 0),
    received_total   bigint  NOT NULL DEFAULT 0,
    allocated_total  bigint  NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customer_order (
    order_id          text PRIMARY KEY,
    customer_id       text NOT NULL,
    customer_tier     text NOT NULL,
    shipping_service  text NOT NULL,
    need_by           date,
    split_preference  text,
    currency          text NOT NULL,
    placed_at         timestamptz NOT NULL,
    event_id          text NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_line (
    order_id            text NOT NULL REFERENCES customer_order (order_id),
    line_id             text NOT NULL,
    sku                 text NOT NULL,
    product_name        text NOT NULL,
    quantity            integer NOT NULL CHECK (quantity > 0),
    unit_price_minor    bigint NOT NULL CHECK (unit_price_minor >= 0),
    quantity_allocated  integer NOT NULL DEFAULT 0,
    status              text NOT NULL,
    placed_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (order_id, line_id),
    CHECK (quantity_allocated BETWEEN 0 AND quantity)
);

-- The backorder queue of an SKU in FIFO order: only the lines that still wait.
CREATE INDEX order_line_waiting ON order_line (sku, placed_at, order_id, line_id)
    WHERE status IN ('BACKORDERED', 'PARTIALLY_ALLOCATED');

CREATE TABLE stock_receipt (
    receipt_id         text PRIMARY KEY,
    sku                text NOT NULL,
    quantity           integer NOT NULL CHECK (quantity > 0),
    supplier_id        text,
    purchase_order_id  text,
    received_at        timestamptz NOT NULL,
    event_id           text NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX stock_receipt_sku ON stock_receipt (sku);

-- Every unit given to a line, with what caused it and the shipment it travels in.
CREATE TABLE allocation (
    allocation_id  bigserial PRIMARY KEY,
    order_id       text NOT NULL,
    line_id        text NOT NULL,
    sku            text NOT NULL,
    quantity       integer NOT NULL CHECK (quantity > 0),
    shipment_id    uuid NOT NULL,
    cause          text NOT NULL,
    allocated_at   timestamptz NOT NULL,
    FOREIGN KEY (order_id, line_id) REFERENCES order_line (order_id, line_id),
    UNIQUE (cause, order_id, line_id)
);

CREATE INDEX allocation_sku ON allocation (sku);

-- Events written in the transaction that caused them; the relay publishes them and stamps published_at.
CREATE TABLE outbox (
    outbox_id      bigserial PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    topic          text NOT NULL,
    message_key    bytea,
    message_value  bytea,
    header_names   text[]  NOT NULL DEFAULT '{}',
    header_values  bytea[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (outbox_id) WHERE published_at IS NULL;

-- One row per refused message, so a redelivered message is not dead-lettered twice.
CREATE TABLE dead_letter (
    source_topic      text    NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint  NOT NULL,
    error_class       text    NOT NULL,
    error_message     text    NOT NULL,
    failed_at         timestamptz NOT NULL,
    PRIMARY KEY (source_topic, source_partition, source_offset)
);
