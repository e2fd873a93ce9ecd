//! Process lifecycle: build every part from the [`Config`], run until SIGTERM/SIGINT, shut down in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the zone server until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), ServerError> {
    let config = Arc::new(config);
    log::info!("realm-server {} starting; effective configuration:\n{}", env!("CARGO_PKG_VERSION"), config.redacted_toml());
    for w in config.warnings() {
        log::warn!("{w}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(ServerError::Signals)?;
    }
    log::info!("zone {} running; SIGTERM or SIGINT stops it", config.server.zone);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!("signal received, stopping");
    Ok(())
}
