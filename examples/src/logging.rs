//! Logging of the example programs: plain text without ANSI colour codes when
//! stdout is not a terminal (a redirected log file stays readable), colours on a
//! terminal, and one JSON object per line with `LOG_FORMAT=json`. The filter is
//! `RUST_LOG` (default `info`).

use std::io::IsTerminal;

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().with_ansi(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
    };
}
