-- Per-player game state. Lives on the player's shard (see src/db/shard.rs); no foreign key to players, which is on
-- the primary in a sharded setup.

CREATE TABLE player_progress (
    player_id    BIGINT PRIMARY KEY,
    zone         TEXT NOT NULL,
    pos_x        REAL,
    pos_y        REAL,
    level        INT NOT NULL DEFAULT 1,
    experience   BIGINT NOT NULL DEFAULT 0,
    health       INT NOT NULL,
    -- Fencing epoch: claiming a player bumps it; every save is UPDATE ... WHERE player_id = $1 AND owner_epoch = $mine,
    -- so a server that lost ownership (paused, partitioned) updates 0 rows and can never overwrite a newer owner.
    owner_epoch  BIGINT NOT NULL DEFAULT 0,
    owner_zone   TEXT,
    updated_at   TIMESTAMPTZ
);

CREATE INDEX idx_player_progress_level ON player_progress (level);

-- Item ids are allocated from this sequence on the primary only, so they are unique across every shard and a
-- duplicated item (the same item_id twice) is detectable.
CREATE SEQUENCE item_id_seq AS BIGINT;

CREATE TABLE inventory_items (
    item_id      BIGINT PRIMARY KEY,
    player_id    BIGINT NOT NULL,
    item_kind    INT NOT NULL,
    quantity     INT NOT NULL CHECK (quantity > 0),
    acquired_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_inventory_items_player_id ON inventory_items (player_id);
