//! `keynet-relay`: the relay hub and/or DHT node alone (the same as `keynet relay`). All logic
//! lives in keynet-core; this parses flags, starts, and stops on SIGINT/SIGTERM.

use std::process::ExitCode;

use keynet_relay::{args, logging, relay};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let format = match logging::take_format(&mut argv) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("keynet-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let args = match args::parse(argv) {
        Ok(args::Command::Help) => {
            print!("{}", args::help());
            return ExitCode::SUCCESS;
        }
        Ok(args::Command::Run(a)) => *a,
        Err(e) => {
            eprintln!("keynet-relay: {e}\n\nRun `keynet-relay --help` for the flags.");
            return ExitCode::from(2);
        }
    };
    logging::init_as(format);
    match relay::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keynet-relay: [{}] {e}", e.code());
            ExitCode::FAILURE
        }
    }
}
