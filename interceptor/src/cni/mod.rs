//! The chained CNI plugin `interceptor-cni` ([`plugin`]) and `interceptor cni
//! install|uninstall` ([`install`]), which put it into a node's CNI configuration.
//!
//! The plugin is a thin client of the node daemon: on ADD it asks the daemon to intercept
//! the pod and passes the previous plugin's result through unchanged; it fails closed (a
//! CNI error, so the pod does not start) when the daemon is unreachable or refuses, except
//! for namespaces exempted in its configuration. Its netconf (the conflist entry):
//!
//! ```json
//! {
//!   "type": "interceptor-cni",
//!   "socket": "/run/interceptor/interceptor.sock",
//!   "excludeNamespaces": ["kube-system"],
//!   "defaultNamespace": "default",
//!   "timeoutSeconds": 20,
//!   "capabilities": {"io.kubernetes.cri.pod-annotations": true}
//! }
//! ```
pub mod install;
pub mod plugin;

/// The plugin's type (binary name) in a conflist.
pub const PLUGIN_TYPE: &str = "interceptor-cni";
/// The capability under which containerd passes the pod's annotations (runtimeConfig key).
pub const ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
/// CNI spec versions the plugin accepts (CHECK exists from 0.4.0).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system"];
