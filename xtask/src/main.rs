//! Developer tasks. `cargo xtask <task>`:
//!
//! * `setup`   install what building and testing need (idempotent): iptables, iproute2,
//!   dnsmasq and dig (the DNS proxy tests), podman + runc + CNI plugins (the daemon's tests),
//!   prometheus and promtool (the metrics tests),
//!   nightly rust-src, bpf-linker (built against nightly's own LLVM); mounts the host's
//!   bpffs at /sys/fs/bpf if the machine booted without one;
//! * `build`   build everything (the eBPF object is embedded in `interceptor`);
//! * `test`    setup + build + every unit and integration test, as root on this kernel;
//! * `demo`    intercept real traffic in a sandbox and show where each connection landed;
//! * `bench`   interception cost vs no interception (`--quick` for a smoke run); `--scale`:
//!   many pods sharing one large MeshConfig;
//! * `vm-test` the eBPF tests inside qemu guests booting other kernels.
//!
//! xtask itself depends on nothing that needs the eBPF toolchain, so `setup` can run first.
mod bench;
mod setup;
mod util;
mod vm;

use anyhow::{Result, bail};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = run(&args);
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some(task) = args.first() else {
        println!("{}", HELP);
        return Ok(());
    };
    let rest = &args[1..];
    match task.as_str() {
        "setup" => setup::setup(),
        "build" => {
            setup::setup()?;
            util::build()
        }
        "test" => {
            setup::setup()?;
            util::lint()?;
            util::build()?;
            util::test(rest)
        }
        "demo" => {
            setup::setup()?;
            util::build()?;
            util::demo(rest)
        }
        "bench" => {
            setup::setup()?;
            bench::bench(rest)
        }
        "vm-test" => {
            setup::setup()?;
            vm::vm_test(rest)
        }
        "help" | "-h" | "--help" => {
            println!("{}", HELP);
            Ok(())
        }
        other => bail!("unknown task {other:?}\n{HELP}"),
    }
}

const HELP: &str = "usage: cargo xtask <task>
  setup              install iptables, iproute2, dnsmasq, dig, podman, runc, CNI plugins,
                     prometheus, nightly rust-src and bpf-linker; mount the host's bpffs
                     at /sys/fs/bpf if missing (idempotent)
  build              setup, then build the workspace (eBPF object embedded in `interceptor`)
  test               setup, fmt + clippy checks, build, then every unit and integration test (as root)
  demo [--mode ebpf|iptables]
                     intercept real traffic in a sandbox; print where each connection landed
  bench [--quick]    interception cost vs no interception, iptables vs eBPF
  bench --scale [--pods N] [--cidrs K]
                     1 000 pods sharing a 10 000-range MeshConfig: memory, enroll, change, status
  vm-test [--kernel 6.1|6.12|5.10|host|all]... [--test BINARY] [--timeout-min N]
                     the integration tests in qemu guests booting Debian's kernels, and
                     natively on this kernel (default: 6.1, 6.12, host); 5.10 must refuse";
