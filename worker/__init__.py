"""backorder-worker: keeps the backorder queue and allocates arriving stock."""
