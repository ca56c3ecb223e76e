//! Debug logging from the eBPF side: off by default, switched at run time through the
//! SETTINGS map, read with aya-log from the pinned programs.
use std::{io::Write, os::fd::AsFd, time::Duration};

use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;

use super::{EbpfError, PinDir, error::Context, maps::PinnedMaps, object::CGROUP_PROGRAMS};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

pub fn set_debug(pins: &PinDir, on: bool) -> Result<()> {
    let _lock = super::lock::lock_installation(pins, super::lock::Mode::Exclusive)?;
    super::marker::require_loaded(pins)?;
    let maps = PinnedMaps::open(pins)?;
    let mut s = maps.settings()?;
    s.debug = on as u32;
    let mut m = maps.settings;
    m.set(0, s, 0)?;
    Ok(())
}

struct Stdout;

impl log::Log for Stdout {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "[{}] {}", record.level(), record.args());
    }
    fn flush(&self) {}
}

/// Prints the programs' log records until interrupted (or for `duration`). The shared lock
/// is held while the log buffer is opened, not while following it (that would keep every
/// mutating command waiting for as long as the log is read).
pub fn follow(pins: &PinDir, duration: Option<Duration>) -> Result<()> {
    let lock = super::lock::lock_installation(pins, super::lock::Mode::Shared)?;
    super::marker::require_loaded(pins)?;
    let (name, _) = CGROUP_PROGRAMS[0];
    let id = ProgramInfo::from_pin(pins.prog(name)).context("eBPF mode is not loaded")?.id();
    // Kept alive for the whole loop: dropping it closes the ring buffer.
    let mut logger = EbpfLogger::init_from_id_with_logger(id, Stdout)
        .map_err(|source| EbpfError::Log { what: "cannot open the programs' log buffer".into(), source })?;
    drop(lock);
    let started = std::time::Instant::now();
    loop {
        let mut fds = [nix::poll::PollFd::new(logger.as_fd(), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16));
        logger.flush();
        if duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
    }
}
