-- The newest sequence number of each producer whose messages a group stored, per partition,
-- written in the same transaction as the rows. A broker that restarts without its log (no queue
-- dir, or an emptied one) loads these, so a flush its predecessor had already handed to a
-- collector, re-sent by the producer, is recognised as a duplicate instead of being stored twice.
CREATE TABLE IF NOT EXISTS producer_sequences (
    group_id    text    NOT NULL,
    partition   integer NOT NULL,
    producer    text    NOT NULL,
    seq         bigint  NOT NULL,
    PRIMARY KEY (group_id, partition, producer)
);
