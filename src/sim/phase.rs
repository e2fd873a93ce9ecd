//! The phases of a tick: the game's systems in the order they run, then the runner's own work. One enum for the
//! game ([`super::Simulation::step_with`] reports each system as it finishes), the runner (which times them) and
//! the metrics (`game_server_tick_phase_duration_seconds{phase}`).

/// A phase of the simulation tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Players and NPCs whose respawn time came.
    Respawns,
    /// Draining and applying player inputs.
    Inputs,
    /// NPC decisions.
    NpcAi,
    /// Movement and the area-of-interest grid.
    Movement,
    /// Abilities, damage, deaths.
    Combat,
    /// Chat delivery.
    Chat,
    /// Zone portals and transfers.
    Portals,
    /// Building and encoding snapshots.
    Snapshots,
    /// Draining the inbound queue (io and worker events) into the session machine and the game.
    Drain,
    /// Handing outbound messages to the io threads.
    Send,
}

impl Phase {
    /// Every phase: the game's systems ([`Phase::GAME`]), then the runner's.
    pub const ALL: [Phase; 10] = [
        Phase::Respawns,
        Phase::Inputs,
        Phase::NpcAi,
        Phase::Movement,
        Phase::Combat,
        Phase::Chat,
        Phase::Portals,
        Phase::Snapshots,
        Phase::Drain,
        Phase::Send,
    ];

    /// The game's systems, in the order [`super::Simulation::step_with`] runs them (the first eight of `ALL`).
    pub const GAME: [Phase; 8] = {
        let mut game = [Phase::Respawns; 8];
        let mut i = 0;
        while i < 8 {
            game[i] = Phase::ALL[i];
            i += 1;
        }
        game
    };

    /// Position in [`Phase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Respawns => "respawns",
            Phase::Inputs => "inputs",
            Phase::NpcAi => "npc_ai",
            Phase::Movement => "movement",
            Phase::Combat => "combat",
            Phase::Chat => "chat",
            Phase::Portals => "portals",
            Phase::Snapshots => "snapshots",
            Phase::Drain => "drain",
            Phase::Send => "send",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn indices_follow_all() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
        assert_eq!(&Phase::ALL[..8], &Phase::GAME[..]);
    }
}
