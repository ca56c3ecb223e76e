//! The `interceptor` command: a thin layer over the library.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Behave like other command-line tools when the reader goes away (`| head`): exit
    // quietly on SIGPIPE instead of panicking on a failed write.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
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
