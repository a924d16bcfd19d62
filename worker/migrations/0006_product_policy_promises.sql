-- Contract 1.1: a product policy also says from when a pre-order product is available and how far out a
-- backorder of it may be promised. Stored as they come (null: not set); what they do comes later.

ALTER TABLE product_policy
    ADD COLUMN available_from   date,      -- a pre-order product: nothing ships before this day
    ADD COLUMN max_promise_days integer;   -- refuse backordered units promised more than this many days out
