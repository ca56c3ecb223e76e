//! The `interceptor` command: a thin layer over the library.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = interceptor::cli::Cli::parse();
    interceptor::cli::init_logging(cli.verbose);
    match interceptor::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(interceptor::cli::exit_code(&err))
        }
    }
}
