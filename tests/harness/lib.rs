//! The sandbox of the integration tests, the demo and the benchmarks: a pod and a world
//! network namespace joined by veth pairs, a child cgroup for the pod's processes, servers
//! that report where each connection landed, and the flow table both modes are run on.
//!
//! Network safety: everything lives in namespaces this code creates (veth pairs only
//! between them), addresses are 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32, nothing
//! is added to the root namespace, programs attach to a child cgroup, and Drop removes it
//! all (also when a test fails).
pub mod daemon;
pub mod dns;
pub mod flows;
pub mod modes;
pub mod podman;
pub mod procs;
pub mod sandbox;

pub use flows::{Actor, FlowCase, Landing};
pub use modes::Mode;
pub use sandbox::{Sandbox, require_root};
