-- herald's own bookkeeping, needed for greenfield and legacy tables alike.

-- The next Kafka offset to deliver, per consumer group and partition, written in the same
-- transaction as the rows: the table's contents and this cursor can never disagree.
CREATE TABLE IF NOT EXISTS herald_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Events the table refused (constraint, type, length), recorded in the same transaction as the
-- cursor that moved past them, so a replay after a crash still sends them to the dead-letter topic.
CREATE TABLE IF NOT EXISTS herald_rejections (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    reason         text        NOT NULL,
    rejected_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, "offset")
);
