//! The init-container mode: osm-edge's nat-table chains, programmed with iptables-restore.
pub mod apply;
pub mod command;
mod error;
pub mod render;
pub mod saved;

pub use apply::{ApplyOptions, apply, cleanup, verify};
pub use error::IptablesError;
pub use render::{payload, shell};
