//! Logging setup for the binary: `tracing` to stderr, plain or JSON, filtered by the config's
//! level (overridden by `RUST_LOG`). Call and session ids travel as fields; digits never do —
//! `Digit` renders as `•`, and card types redact their `Debug`/`Display`.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log.level {0:?} is not a valid tracing filter: {1}")]
    BadFilter(String, String),
}

/// Installs the global subscriber. Safe to call once per process; later calls are ignored.
pub fn init(cfg: &LogConfig) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).map_err(|e| LoggingError::BadFilter(v.clone(), e.to_string()))?
        }
        _ => EnvFilter::try_new(&cfg.level)
            .map_err(|e| LoggingError::BadFilter(cfg.level.clone(), e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = if cfg.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}
