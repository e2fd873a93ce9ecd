//! `realm-server`: parse arguments, load the configuration, run. Logic lives in the `realm` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "realm-server", version, about = "Realm MMORPG zone server")]
struct Cli {
    /// Configuration file (TOML); every key also has a REALM_* environment override. Without it, built-in defaults.
    #[arg(short, long, env = "REALM_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the zone server (the default).
    Run,
    /// Validate the configuration, print the effective values (secrets redacted) and exit.
    CheckConfig,
    /// Apply the SQL migrations in migrations/ to the primary and every shard (safe to run twice), then exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match realm::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("realm-server: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", config.redacted_toml());
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Command::Migrate => {
            realm::logging::init(&config.log);
            match realm::db::migrate::run_cli(&config) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("realm-server migrate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            realm::logging::init(&config.log);
            match realm::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("realm-server: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
