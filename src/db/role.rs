//! What a database connection is for and where a statement may run: the vocabulary the pools, the statement
//! registry and the errors share (a leaf module: it depends on nothing else in `db`).

use std::fmt;

/// What a pool's database is for. Statements check it (a shard statement on a replica is a routing bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The primary: accounts, sessions, item id allocation; all writes to them.
    Primary,
    /// Read replica `i` of the primary.
    Replica(usize),
    /// Player-data shard `i` (the primary itself when no shards are configured).
    Shard(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Replica(i) => write!(f, "replica-{i}"),
            Role::Shard(i) => write!(f, "shard-{i}"),
        }
    }
}

/// Where a statement must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The primary only (writes and reads that must see the latest write: accounts, sessions).
    Primary,
    /// A read that may be served by a healthy replica (or the primary, when none is healthy or the caller asks
    /// for read-your-writes).
    Replica,
    /// The shard that owns the player (player_progress, inventory, event logs).
    Shard,
}

impl Target {
    /// True when a connection of `role` may run a statement of this target.
    pub fn allows(self, role: Role) -> bool {
        matches!(
            (self, role),
            (Target::Primary, Role::Primary)
                | (Target::Replica, Role::Replica(_) | Role::Primary)
                | (Target::Shard, Role::Shard(_))
        )
    }
}
