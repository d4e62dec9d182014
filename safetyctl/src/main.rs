//! `safetyctl`: see `safetyctl --help` and the README's operator section.

use clap::Parser;

fn main() {
    let cli = safetyctl::cli::Cli::parse();
    // Store logs go to stderr, plain text, warnings only unless RUST_LOG says more.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
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
