//! interceptor: transparent interception of a sidecar mesh's pod traffic (osm-edge, Pipy).
//!
//! * [`policy`]: the pure model (sources, merge, validation, osm-edge's rules, the decision);
//! * [`iptables`]: the init-container mode, osm-edge's chains via iptables-restore;
//! * [`ebpf`]: the node-daemon mode, cgroup/sock_ops/sk_lookup programs without NAT;
//! * [`explain`]: why a flow is redirected or not;
//! * [`daemon`], [`api`], [`cni`]: the node daemon, its local API and the chained CNI plugin;
//! * [`metrics`]: Prometheus metrics of the eBPF state and the daemon;
//! * [`netns`], [`routes`], [`cells`]: a pod's namespaces and what its routing tables say.
//!
//! The command line (`src/bin/interceptor/`) is a thin layer over these: each subsystem takes
//! typed options and returns its own error type ([`ebpf::EbpfError`],
//! [`iptables::IptablesError`], [`netns::NetnsError`], …).
pub mod api;
pub mod cells;
pub mod cni;
pub mod daemon;
pub mod ebpf;
pub mod explain;
pub mod files;
pub mod iptables;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod routes;
