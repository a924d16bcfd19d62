-- Whether a SKU has any waiting line with an expected ship date: answered by one index probe, however
-- long its queue of lines with no date is.
CREATE INDEX order_line_dated ON order_line (sku)
    WHERE status IN ('BACKORDERED', 'PARTIALLY_ALLOCATED') AND expected_ship_date IS NOT NULL;
