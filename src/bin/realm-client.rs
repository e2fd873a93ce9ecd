//! `realm-client`: the Realm game client. Parses arguments, then runs the terminal UI or a script; the logic lives
//! in `realm::game_client`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use realm::game_client::{script, tui, Endpoint};
use realm::net::tls::ServerTrust;

#[derive(Parser)]
#[command(
    name = "realm-client",
    version,
    about = "Realm game client: a terminal UI to play, or --script for scripts and tests",
    after_help = "The password comes from REALM_PASSWORD or is typed (hidden) on the login screen; it is never a \
                  command-line argument, where other users could read it.\n\
                  Script commands: register NAME PASS | login NAME PASS | move DX DY SECONDS | attack-nearest | \
                  say TEXT | zone TEXT | wait SECONDS | expect-moved | expect-chat TEXT | logout"
)]
#[command(group = clap::ArgGroup::new("trust").required(true).args(["ca", "insecure"]))]
struct Cli {
    /// The zone server's control channel, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7777", value_name = "HOST:PORT")]
    server: String,
    /// PEM certificate (or CA) to trust: for a development server, the file its log names after "USING A
    /// SELF-SIGNED DEVELOPMENT CERTIFICATE (written to ...)".
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Accept any server certificate. Development only: anyone on the path can impersonate the server.
    #[arg(long)]
    insecure: bool,
    /// Account name (prefills the login screen).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Create the account instead of logging in.
    #[arg(long)]
    register: bool,
    /// Run a script instead of the terminal UI ("-" reads it from stdin); exits non-zero when a command fails.
    #[arg(long, value_name = "FILE")]
    script: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let trust = match (&cli.ca, cli.insecure) {
        (Some(path), _) => ServerTrust::CaFile(path.clone()),
        (None, _) => {
            eprintln!("realm-client: WARNING: --insecure: the server's certificate is not verified");
            ServerTrust::InsecureAcceptAny
        }
    };
    let endpoint = match Endpoint::new(&cli.server, &trust) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("realm-client: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &cli.script {
        let source = if file == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map(|_| s)
        } else {
            std::fs::read_to_string(file)
        };
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                eprintln!("realm-client: cannot read script {file}: {e}");
                return ExitCode::from(2);
            }
        };
        let mut out = std::io::stdout().lock();
        return match script::run(&source, endpoint, &mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => ExitCode::from(e.exit_code()),
        };
    }
    let password = std::env::var("REALM_PASSWORD").ok().filter(|p| !p.is_empty());
    let options =
        tui::TuiOptions { endpoint, username: cli.user, password, register: cli.register, insecure: cli.insecure };
    match tui::run(options) {
        Ok(Some(end)) if !end.is_clean() => {
            eprintln!("realm-client: {end}");
            ExitCode::FAILURE
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("realm-client: {e}");
            ExitCode::FAILURE
        }
    }
}
