//! `keynet-relay`: the relay hub and/or DHT node alone (the same as `keynet relay`). All logic
//! lives in keynet-core; this parses flags, starts, and stops on SIGINT/SIGTERM.

use std::process::ExitCode;

use keynet_relay::{args, logging, relay};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
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
    logging::init();
    match relay::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keynet-relay: [{}] {e}", e.code());
            ExitCode::FAILURE
        }
    }
}
