//! `safetyctl`: see `safetyctl --help` and the README's operator section.

use clap::Parser;

fn main() {
    let cli = safetyctl::cli::Cli::parse();
    // Store logs go to stderr, plain text, warnings only unless RUST_LOG says more. The
    // drill and doctor provoke failures on purpose (the drill kills the primary under a
    // load that flips the kill switch every few milliseconds; doctor tries a standby
    // for a primary) and report them themselves, so they log only errors by default
    // (RUST_LOG=warn shows the rest).
    let default_filter = if reports_itself(&cli.command) {
        "error"
    } else {
        "warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("safetyctl: cannot start the runtime: {e}");
            std::process::exit(safetyctl::cli::EXIT_FAILED);
        }
    };
    match runtime.block_on(safetyctl::cli::run(cli)) {
        Ok(()) => std::process::exit(safetyctl::cli::EXIT_OK),
        Err(failure) => {
            eprintln!("safetyctl: {}", failure.message);
            std::process::exit(failure.code);
        }
    }
}

#[cfg(feature = "drill")]
fn reports_itself(command: &safetyctl::cli::Command) -> bool {
    use safetyctl::cli::Command;
    matches!(command, Command::Drill { .. } | Command::Doctor)
}

#[cfg(not(feature = "drill"))]
fn reports_itself(command: &safetyctl::cli::Command) -> bool {
    matches!(command, safetyctl::cli::Command::Doctor)
}
