-- The relay deletes the rows Kafka acknowledged instead of stamping them published_at: a stamp wrote a new
-- version of each row and an entry in each of three indexes, and the purge deleted the row a day later.
-- published_at stays, always NULL from now on, so that what reads the outbox's pending rows by it still reads
-- them; the rows stamped before this are deleted here, with the index that served their purge.
DELETE FROM outbox WHERE published_at IS NOT NULL;
DROP INDEX outbox_published;
