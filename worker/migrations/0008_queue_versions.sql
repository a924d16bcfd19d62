-- A version per SKU's queue, raised by every transaction that writes one of the SKU's order lines, its
-- stock level, its product policy or its expected restocks. A reader that keeps a copy of a queue across transactions (the promise API) reads one
-- row to know whether its copy still holds. Raised last in a transaction, in SKU order (no deadlock).
-- Anything else that ever writes order lines must raise it too.

CREATE TABLE sku_queue_version (
    sku     text   PRIMARY KEY,
    version bigint NOT NULL
);
