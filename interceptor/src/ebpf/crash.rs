//! Test-only crash points: `INTERCEPTOR_TEST_CRASH_AT=<step>` makes the process SIGKILL
//! itself when it reaches that step, so the tests can prove that a command killed anywhere
//! leaves every other pod intercepted and that the next command completes or rolls back
//! what it left. Compiled in always (one environment lookup per step); never set it in
//! production.
pub const ENV: &str = "INTERCEPTOR_TEST_CRASH_AT";

/// The steps of `enroll` (a re-enroll reaches all of them).
pub const ENROLL_STEPS: &[&str] = &[
    "enroll-generation-written",
    "enroll-sk-lookup-attached",
    "enroll-addresses-set",
    "enroll-switched",
    "enroll-info-written",
    "enroll-old-generation-half-deleted",
];

/// The steps of a policy-only switch (`enroll --policy-only`, the daemon's MeshConfig
/// changes).
pub const UPDATE_STEPS: &[&str] = &["update-objects-written", "update-switched", "update-old-generation-half-deleted"];

/// The steps of `unenroll`.
pub const UNENROLL_STEPS: &[&str] =
    &["unenroll-switched", "unenroll-detached", "unenroll-addresses-cleared", "unenroll-generation-half-deleted"];

/// The steps of an in-place upgrade (`load` of another build).
pub const UPGRADE_STEPS: &[&str] = &[
    "upgrade-started",
    "upgrade-programs-pinned",
    "upgrade-first-cgroup-link-updated",
    "upgrade-cgroup-links-updated",
    "upgrade-pod-links-updated",
    "upgrade-first-program-renamed",
    "upgrade-programs-renamed",
];

/// The steps of a first `load`.
pub const LOAD_STEPS: &[&str] = &["load-first-link-attached", "load-staging-complete"];

/// Kills the process (SIGKILL: no destructor, no cleanup) if the test asked for `step`.
pub fn point(step: &str) {
    if std::env::var_os(ENV).is_some_and(|v| v == step) {
        eprintln!("{ENV}: killing myself at {step}");
        // SAFETY: plain syscalls.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
