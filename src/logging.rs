//! Logging through `log` + `env_logger`. `RUST_LOG` wins over `log.level`; `log.format = "json"` (LOG_FORMAT=json)
//! prints one JSON object per line with timestamp, level, target, thread and message.

use std::io::Write;

use crate::config::{LogConfig, LogFormat};

/// Installs the global logger. Safe to call more than once (later calls are ignored).
pub fn init(config: &LogConfig) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&config.level);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        builder.parse_filters(&filters);
    }
    if config.format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "thread": std::thread::current().name().unwrap_or("?"),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    } else {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} [{}] {}: {}",
                buf.timestamp_millis(),
                record.level(),
                std::thread::current().name().unwrap_or("?"),
                record.target(),
                record.args()
            )
        });
    }
    let _ = builder.try_init();
}
