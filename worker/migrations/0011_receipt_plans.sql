-- A receipt that fills more lines than one transaction writes commits its decisions first, as a plan: the
-- units of each further step promised to named lines (one row a step), off the SKU's shelf at once. Each step
-- then takes its row under the SKU's lock and writes its lines, allocations and events; a step whose row is
-- gone was given (or given back) by another transaction. `promised` counts the units in a SKU's rows, so that
-- received_total = available + promised + what the lines hold.
ALTER TABLE stock_level ADD COLUMN promised integer NOT NULL DEFAULT 0 CHECK (promised >= 0);

CREATE TABLE receipt_plan (
    cause       text        NOT NULL,  -- the receipt: inventory-received/<receipt id>
    step        integer     NOT NULL,
    sku         text        NOT NULL,
    units_total integer     NOT NULL,  -- the sum of units
    order_ids   text[]      NOT NULL,  -- the step's lines, as (order_ids[i], line_ids[i]) getting units[i]
    line_ids    text[]      NOT NULL,
    units       integer[]   NOT NULL,
    planned_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cause, step),
    CHECK (cardinality(order_ids) = cardinality(line_ids) AND cardinality(line_ids) = cardinality(units))
);
-- Read by SKU with its queue: the lines other transactions must leave to the plan.
CREATE INDEX receipt_plan_sku ON receipt_plan (sku);
