-- How far each source has published, per watched table (its Kafka transaction committed).
-- herald deletes the captured changes that every source of a table has published, so
-- herald_changes holds only what is still in flight. The cursor in Kafka stays the truth; this
-- row is only the clean-up's high-water mark. A source taken out of the config keeps its row,
-- and so holds back the clean-up of its table (herald warns), until
-- `herald migrate --drop-source NAME` removes it.
CREATE TABLE IF NOT EXISTS herald_capture_progress (
    source_name  text        PRIMARY KEY,
    source_table text        NOT NULL,
    txid         xid8        NOT NULL,
    id           bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
