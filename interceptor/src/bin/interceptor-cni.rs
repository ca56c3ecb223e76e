//! `interceptor-cni`: the chained CNI plugin (see `interceptor::cni::plugin`).
fn main() -> std::process::ExitCode {
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    interceptor::cni::plugin::main()
}
