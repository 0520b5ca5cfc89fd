-- Each streamer's resume checkpoint (pass, position, next sequence, last timestamp), stored after
-- every acknowledged flush. Kept in the database, not on a broker: a broker lost without a queue dir
-- must not take the streamers' positions (and sequence numbers) with it.
CREATE TABLE IF NOT EXISTS producer_checkpoints (
    namespace   text        NOT NULL,
    producer    text        NOT NULL,
    state       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, producer)
);
