-- Statement-level capture: one trigger call per INSERT or UPDATE statement, not per row. The
-- statement's rows (its transition table) are copied into herald_changes by one INSERT … SELECT,
-- in the order the statement wrote them, with one notification; a bulk writer's 100,000-row
-- INSERT … SELECT pays one trigger call instead of 100,000. The changes recorded are the same,
-- one row each, with the same transaction id, so readers and positions are unaffected.
--
-- Postgres allows a transition table only on a trigger for a single event, so the watched table
-- gets two triggers calling this function: `herald_capture` (AFTER INSERT) and
-- `herald_capture_update` (AFTER UPDATE), both REFERENCING NEW TABLE AS herald_new_rows. herald
-- swaps an earlier row-level `herald_capture` for them in one transaction, so every row is
-- captured exactly once across the swap. The row-level function `herald_capture()` stays for a
-- table not swapped yet.
CREATE OR REPLACE FUNCTION herald_capture_statement() RETURNS trigger
LANGUAGE plpgsql
-- Runs with the search_path it was created with (herald's schema), whatever the writer's is.
SET search_path FROM CURRENT
AS $$
DECLARE
    watched text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    captured bigint;
BEGIN
    INSERT INTO herald_changes (source_table, operation, row_data, writer_application, writer_role)
    SELECT watched, TG_OP, to_jsonb(changed), current_setting('application_name', true), current_user
    FROM herald_new_rows AS changed;
    GET DIAGNOSTICS captured = ROW_COUNT;
    -- A statement that wrote no row (an UPDATE matching nothing) records and signals nothing.
    IF captured > 0 THEN
        PERFORM pg_notify('herald_changes', watched);
    END IF;
    RETURN NULL;
END
$$;
