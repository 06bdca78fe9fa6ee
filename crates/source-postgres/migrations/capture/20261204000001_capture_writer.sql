-- Who wrote each change: the writer's application_name and role, published with its event as
-- the `herald.origin.writer` header, so the last phase of a migration can see which legacy
-- producers still write the table. Nullable and without a default: adding them rewrites
-- nothing, and rows captured before have none.
ALTER TABLE herald_changes ADD COLUMN IF NOT EXISTS writer_application text;
ALTER TABLE herald_changes ADD COLUMN IF NOT EXISTS writer_role text;

CREATE OR REPLACE FUNCTION herald_capture() RETURNS trigger
LANGUAGE plpgsql
-- Runs with the search_path it was created with (herald's schema), whatever the writer's is.
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO herald_changes (source_table, operation, row_data, writer_application, writer_role)
    VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP, to_jsonb(NEW),
            current_setting('application_name', true), current_user);
    PERFORM pg_notify('herald_changes', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;
