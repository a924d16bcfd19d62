-- A version per SKU: a token (random, never given twice) set anew by every transaction that writes one of
-- the SKU's order lines, its stock level, its product policy or its expected restocks. A reader that keeps
-- a copy of what it read of a SKU across transactions (the promise API) reads one row to know whether its
-- copy still holds; a SKU without a row is not kept. Set last in a transaction, in SKU order (no deadlock).
-- Anything else that ever writes those tables must set it too.

CREATE TABLE sku_queue_version (
    sku     text   PRIMARY KEY,
    version bigint NOT NULL
);
