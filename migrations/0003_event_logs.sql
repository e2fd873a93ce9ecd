-- Append-heavy event logs, range-partitioned by day (UTC). Partitions are named <table>_pYYYYMMDD and are created
-- ahead and dropped past retention by the PartitionManager (src/db/partition.rs); there is deliberately no DEFAULT
-- partition (it would block creating a day whose rows had landed in it).

CREATE TABLE combat_log (
    at      TIMESTAMPTZ NOT NULL,
    zone    TEXT NOT NULL,
    actor   BIGINT NOT NULL,
    target  BIGINT,
    kind    INT NOT NULL,
    amount  INT NOT NULL
) PARTITION BY RANGE (at);

CREATE INDEX idx_combat_log_actor_at ON combat_log (actor, at);

CREATE TABLE chat_log (
    at       TIMESTAMPTZ NOT NULL,
    zone     TEXT NOT NULL,
    actor    BIGINT NOT NULL,
    target   BIGINT,
    channel  TEXT NOT NULL,
    text     TEXT NOT NULL
) PARTITION BY RANGE (at);

CREATE INDEX idx_chat_log_zone_at ON chat_log (zone, at);
