//! eBPF mode: programs loaded once per node and attached at a cgroup, pods enrolled by
//! network namespace with their own policy, all state pinned under one directory.
//!
//! | program            | hook                     | what it does                               |
//! |--------------------|--------------------------|--------------------------------------------|
//! | intercept_connect4/6 | cgroup/connect4, connect6 | PROXY_OUTPUT: redirect without NAT      |
//! | dialled_peer4/6    | cgroup/getpeername4/6    | the application sees what it dialled       |
//! | track_connections  | sock_ops                 | original destination to the sidecar side; inbound listener discovery |
//! | original_dst       | cgroup/getsockopt        | SO_ORIGINAL_DST                            |
//! | steer_inbound      | sk_lookup (per pod netns)| PROXY_INBOUND: steer to 15003 without NAT  |
//! | dns_proxy_sendmsg4 | cgroup/sendmsg4          | local DNS proxy rule: sendto 127.0.0.153:53 → :5300 |
//! | dns_proxy_recvmsg4/6 | cgroup/recvmsg4/6      | its replies come from 127.0.0.153:53       |
//!
//! The local DNS proxy rule also uses the UDP branch of connect4/6 (connected sockets) and
//! of getpeername4/6. Minimum kernel: 5.17 (see `probe`); the DNS hooks alone need 5.3
//! (sendmsg4 4.18, recvmsg4/6 5.2, socket storage in cgroup sock_addr programs 5.3).
//!
//! Lifecycle: every command locks the installation (`lock`), touches only a directory
//! marked as an installation (`marker`), survives being killed at any step (`loader`,
//! `enroll`, tested through `crash`), and collects what interrupted commands and departed
//! pods leave (`gc`).
pub mod cgroup;
pub mod compile;
pub mod crash;
pub mod debug;
pub mod enroll;
pub mod error;
pub mod gc;
pub mod insn;
pub mod listeners;
pub mod loader;
pub mod lock;
pub mod maps;
pub mod marker;
pub mod object;
pub mod objects;
pub mod pins;
pub mod probe;
pub mod raw;
pub mod sock_diag;
pub mod status;
pub mod trampoline;

pub use enroll::{EnrollOptions, enroll, unenroll};
pub use error::{EbpfError, NotInstallation};
pub use gc::{GcReport, gc};
pub use loader::{LoadOptions, LoadOutcome, LoadReport, Unloaded, load, load_report, unload, unload_report};
pub use lock::InstallLock;
pub use pins::PinDir;
pub use status::{Status, status};
