-- A SKU's units on hand and promised add up receipt after receipt, with no bound but what nobody takes: in four
-- bytes, a SKU nobody waits for refused its 2,148th receipt of a million units (the save out of range), while
-- what it has received was counted in eight bytes already.
ALTER TABLE stock_level ALTER COLUMN available TYPE bigint, ALTER COLUMN promised TYPE bigint;
