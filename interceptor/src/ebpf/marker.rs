//! The installation marker: what makes a directory an interceptor installation.
//!
//! bpffs holds only pinned BPF objects and directories, so the marker is a pinned BPF map:
//! `<pin-dir>/installation`, a one-entry array whose value starts with a magic number and
//! records the cgroup the programs are attached to (its path and id: `enroll` checks that the
//! pod's processes are under it). `load` writes it last in the staging directory, so a
//! directory with a valid marker was complete when it was renamed into place. Every command
//! checks it before touching anything; `unload` refuses (deleting nothing) any directory
//! without it, and removes it last.
use std::{os::fd::AsFd, path::Path};

use aya::maps::{Array, IterableMap, Map, MapData};
use aya_obj::generated::bpf_map_type;
use bytemuck::{Pod, Zeroable};

use super::{EbpfError, NotInstallation, PinDir, error::Context, maps::fill, pins::on_bpffs, raw};

type Result<T, E = EbpfError> = std::result::Result<T, E>;

/// "ICPT-INS" read as a big-endian number.
pub const MAGIC: u64 = u64::from_be_bytes(*b"ICPT-INS");
pub const FORMAT: u32 = 1;
const MAP_NAME: &str = "INSTALLATION";

/// The marker's value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Marker {
    pub magic: u64,
    pub format: u32,
    pub _pad: u32,
    /// The cgroup the programs are attached to: its id (the inode of its directory on cgroup2)…
    pub cgroup_id: u64,
    /// …and its path, as seen by the loader.
    pub cgroup_path: [u8; 240],
    /// Seconds since the epoch of the load.
    pub created_at: u64,
}

// SAFETY: plain old data without padding (checked by bytemuck's derive).
unsafe impl aya::Pod for Marker {}

impl Marker {
    pub fn new(cgroup_path: &Path, cgroup_id: u64) -> Marker {
        Marker {
            magic: MAGIC,
            format: FORMAT,
            _pad: 0,
            cgroup_id,
            cgroup_path: fill(&cgroup_path.display().to_string()),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    pub fn cgroup_path(&self) -> String {
        super::maps::c_str(&self.cgroup_path)
    }

    /// Creates the marker map and pins it (the last step of building a staging directory).
    pub fn pin(&self, pins: &PinDir) -> Result<()> {
        let fd = raw::array_map_create(MAP_NAME, size_of::<Marker>() as u32, 1)
            .context("cannot create the installation marker")?;
        let mut array: Array<MapData, Marker> =
            Array::try_from(Map::Array(MapData::from_fd(fd).context("cannot open the installation marker")?))?;
        array.set(0, *self, 0).context("cannot write the installation marker")?;
        raw::obj_pin(array.map().fd().as_fd(), &pins.marker()).context("cannot pin the installation marker")?;
        Ok(())
    }

    /// The marker of `pins`, if it holds one (`None`: no marker, or something else pinned
    /// under its name).
    pub fn read(pins: &PinDir) -> Option<Marker> {
        let data = MapData::from_pin(pins.marker()).ok()?;
        let info = raw::map_info(data.fd().as_fd()).ok()?;
        if !info.is(bpf_map_type::BPF_MAP_TYPE_ARRAY)
            || info.key_size != 4
            || info.value_size != size_of::<Marker>() as u32
        {
            return None;
        }
        let array: Array<MapData, Marker> = Array::try_from(Map::Array(data)).ok()?;
        let m = array.get(&0, 0).ok()?;
        (m.magic == MAGIC).then_some(m)
    }
}

/// Checks that a complete installation is pinned at `pins` (the caller holds its lock).
pub(crate) fn require_loaded(pins: &PinDir) -> Result<Marker> {
    let marker = require_installation(pins)?;
    if !pins.is_loaded() {
        return Err(EbpfError::Incomplete { dir: pins.path().to_path_buf() });
    }
    Ok(marker)
}

/// Checks that `pins` is an interceptor installation on a bpf filesystem: the only kind of
/// directory any command modifies.
pub fn require_installation(pins: &PinDir) -> Result<Marker> {
    let dir = pins.path();
    let not = |why| Err(EbpfError::NotAnInstallation { dir: dir.to_path_buf(), why });
    if !dir.exists() {
        return Err(EbpfError::NotLoaded { dir: dir.to_path_buf() });
    }
    if !dir.is_dir() {
        return not(NotInstallation::NotADirectory);
    }
    if !on_bpffs(dir) {
        return not(NotInstallation::NotOnBpffs);
    }
    match Marker::read(pins) {
        Some(m) if m.format == FORMAT => Ok(m),
        Some(m) => not(NotInstallation::MarkerFormat { format: m.format, known: FORMAT }),
        None => not(NotInstallation::NoMarker),
    }
}
