//! `realm-bots`: parse the flags, run the load, print the report, map the outcome to an exit code. Logic lives in
//! `realm::bots`.
//!
//! Exit codes: 0 every bot got in, bound UDP, received snapshots and saw itself move (or `--allow-failures`);
//! 1 some bot failed; 2 the run could not start (bad flag, unreadable CA, unresolvable server).

use std::process::ExitCode;

use clap::Parser;
use realm::bots::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    let report = match bots::run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("realm-bots: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("realm-bots: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.failed > 0 && !args.allow_failures {
        eprintln!("realm-bots: {} of {} bots failed", report.failed, report.bots);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
