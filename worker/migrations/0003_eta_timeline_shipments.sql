-- Expected restocks and supplier punctuality (expected ship dates), the status-update timeline,
-- and shipments handed to carriers.

-- Open purchase-order lines: a later event for the same purchase order and SKU replaces the earlier
-- one; quantity 0 withdraws it; a receipt naming the purchase order consumes it.
CREATE TABLE expected_restock (
    purchase_order_id  text NOT NULL,
    sku                text NOT NULL,
    supplier_id        text NOT NULL,
    quantity           integer NOT NULL CHECK (quantity >= 0),
    expected_date      date NOT NULL,
    decided_at         timestamptz NOT NULL,
    event_id           text NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purchase_order_id, sku)
);
CREATE INDEX expected_restock_open ON expected_restock (sku) WHERE quantity > 0;

-- How late each supplier's receipts came against the date expected for them.
CREATE TABLE supplier_delivery (
    receipt_id         text PRIMARY KEY,
    supplier_id        text NOT NULL,
    purchase_order_id  text NOT NULL,
    sku                text NOT NULL,
    expected_date      date NOT NULL,
    received_on        date NOT NULL,
    days_late          integer NOT NULL
);
CREATE INDEX supplier_delivery_supplier ON supplier_delivery (supplier_id, received_on);

ALTER TABLE order_line
    ADD COLUMN expected_ship_date date,
    ADD COLUMN eta_basis text,
    ADD COLUMN quantity_shipped integer NOT NULL DEFAULT 0,
    ADD COLUMN shipped_at timestamptz;

-- The expected ship date the customer was last told (null: none told, or told it is unknown).
ALTER TABLE customer_order ADD COLUMN eta_told date;

-- One row per status update sent: the primary key makes a second one for the same step impossible.
CREATE TABLE status_update (
    order_id  text NOT NULL,
    step      integer NOT NULL,
    sent_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, step)
);

CREATE TABLE shipment_dispatch (
    shipment_id         uuid PRIMARY KEY,
    order_id            text NOT NULL,
    carrier             text NOT NULL,
    tracking_number     text NOT NULL,
    estimated_delivery  date,
    dispatched_at       timestamptz NOT NULL
);
