-- Reads that must not grow with history.
-- A SKU's expected restocks, consumed ones included (a late word about a purchase order already received
-- must not reopen it), are read by SKU: through an index, not by scanning every purchase order ever expected.
CREATE INDEX expected_restock_sku ON expected_restock (sku);
-- The sweep reads every line that waits or holds reserved units: the waiting ones through order_line_waiting,
-- the holding ones through this one, instead of a scan of every line ever written.
CREATE INDEX order_line_held ON order_line (order_id) WHERE quantity_reserved > 0;
