-- Statement-level capture: one trigger call per INSERT or UPDATE statement, not per row, and
-- the statement's rows (its transition table) recorded in chunks of up to 100 rows per
-- herald_changes row, as a JSON array in the order the statement wrote them. A bulk writer's
-- 100,000-row INSERT … SELECT pays one trigger call and 1,000 recorded rows instead of 100,000
-- of each; a single-row statement records a one-element array. `json` rather than `jsonb`:
-- row_to_json writes text straight away, where jsonb would convert each row into its binary
-- form only for herald to read it back as text (to_jsonb alone costs a bulk writer as much as
-- its own insert).
--
-- Rows captured before keep `row_data` (one row's jsonb, NULL from now on) and are read as
-- before. A chunk is never split between Kafka transactions, so the source's cursor
-- (transaction id, change id) still says exactly what is published.
--
-- Postgres allows a transition table only on a trigger for a single event, so the watched table
-- gets two triggers calling this function: `herald_capture` (AFTER INSERT) and
-- `herald_capture_update` (AFTER UPDATE), both REFERENCING NEW TABLE AS herald_new_rows. herald
-- swaps an earlier row-level `herald_capture` for them in one transaction, so every row is
-- captured exactly once across the swap. The row-level function `herald_capture()` stays for a
-- table not swapped yet.
ALTER TABLE herald_changes ALTER COLUMN row_data DROP NOT NULL;
ALTER TABLE herald_changes ADD COLUMN IF NOT EXISTS changed_rows json;
-- How many rows the chunk holds, so a reader limits its batch without parsing the arrays.
ALTER TABLE herald_changes ADD COLUMN IF NOT EXISTS changed_count integer;

CREATE OR REPLACE FUNCTION herald_capture_statement() RETURNS trigger
LANGUAGE plpgsql
-- Runs with the search_path it was created with (herald's schema), whatever the writer's is.
SET search_path FROM CURRENT
AS $$
DECLARE
    captured bigint;
BEGIN
    -- The table's name, the writer's application and role sit in the chunks' select list: they
    -- are evaluated once per chunk, not per row (a DECLARE initialiser would cost each single-row
    -- statement three evaluations more than the row-level trigger paid).
    INSERT INTO herald_changes (source_table, operation, changed_rows, changed_count, writer_application, writer_role)
    SELECT TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, json_agg(changed ORDER BY place), count(*),
           current_setting('application_name', true), current_user
    FROM (SELECT changed, row_number() OVER () AS place FROM herald_new_rows AS changed) AS numbered
    GROUP BY (place - 1) / 100
    -- Change ids in the order the statement wrote its rows.
    ORDER BY (place - 1) / 100;
    GET DIAGNOSTICS captured = ROW_COUNT;
    -- A statement that wrote no row (an UPDATE matching nothing) records and signals nothing.
    IF captured > 0 THEN
        PERFORM pg_notify('herald_changes', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END
$$;
