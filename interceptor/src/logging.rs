//! Logging to stderr (tracing), for the command line and the daemon.

/// `verbose`: 0 warnings, 1 info (-v), 2 and more debug (-vv).
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).without_time().try_init();
}
