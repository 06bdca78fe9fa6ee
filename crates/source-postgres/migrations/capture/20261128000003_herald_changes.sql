-- Change capture for herald's Postgres source: a trigger on each watched table records every
-- inserted or updated row here, with the id of the transaction that wrote it, and notifies.

CREATE TABLE IF NOT EXISTS herald_changes (
    id           bigserial   PRIMARY KEY,
    source_table text        NOT NULL,
    operation    text        NOT NULL,
    row_data     jsonb       NOT NULL,
    -- The writer's transaction. herald reads only changes of transactions older than every
    -- transaction still running (the snapshot's xmin), in (txid, id) order: a change committed
    -- out of id order can never be passed over.
    txid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS herald_changes_by_table ON herald_changes (source_table, txid, id);

CREATE OR REPLACE FUNCTION herald_capture() RETURNS trigger
LANGUAGE plpgsql
-- Runs with the search_path it was created with (herald's schema), whatever the writer's is.
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO herald_changes (source_table, operation, row_data)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, to_jsonb(NEW));
    PERFORM pg_notify('herald_changes', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;
