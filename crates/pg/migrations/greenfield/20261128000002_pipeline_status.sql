-- The greenfield schema herald owns: history for auditors, latest state for pollers.

-- One row per event, as received.
CREATE TABLE IF NOT EXISTS pipeline_status (
    id              bigserial   PRIMARY KEY,
    event           text        NOT NULL,
    stage           text        NOT NULL,
    source          text        NOT NULL,
    records         bigint,
    status          text        NOT NULL,
    event_time      timestamptz NOT NULL DEFAULT now(),
    -- The whole event as received; rows written straight into the table may leave it out.
    payload         jsonb,
    -- 'kafka' on rows herald wrote from Kafka, which the Postgres source never republishes;
    -- rows written straight into the table get 'db'.
    origin          text        NOT NULL DEFAULT 'db',
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS pipeline_status_source_stage_time
    ON pipeline_status (source, stage, event_time DESC);

-- The newest event per (source, stage): "is stage X done for source Y?" is one primary-key read.
CREATE TABLE IF NOT EXISTS pipeline_status_latest (
    source          text        NOT NULL,
    stage           text        NOT NULL,
    event           text        NOT NULL,
    records         bigint,
    status          text        NOT NULL,
    event_time      timestamptz NOT NULL DEFAULT now(),
    payload         jsonb,
    origin          text        NOT NULL DEFAULT 'db',
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, stage)
);
