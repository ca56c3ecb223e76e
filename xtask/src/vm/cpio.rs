//! A cpio "newc" archive (what the kernel unpacks as initramfs), written in Rust so that
//! ownership (root), modes and the /dev/console node are right without a staging tree
//! owned by root or mknod on the host.
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

#[derive(Clone, Debug)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    /// A regular file with the contents of a host file.
    File {
        source: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    CharDev {
        major: u32,
        minor: u32,
        mode: u32,
    },
}

/// The archive's entries by path (relative, no leading slash). Sorted order puts every
/// directory before its contents, as the kernel's unpacker needs.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds an entry and its missing parent directories (0755); a later add replaces.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries.entry(p.to_string_lossy().into_owned()).or_insert(Entry::Dir { mode: 0o755 });
            parent = p.parent();
        }
        self.entries.insert(path, entry);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Writes the archive through `gzip -6` to `out`.
    pub fn write_gz(&self, out: &Path) -> Result<u64> {
        let file = std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
        let mut gz = Command::new("gzip").arg("-6").stdin(Stdio::piped()).stdout(file).spawn().context("run gzip")?;
        let mut stdin = gz.stdin.take().expect("piped");
        let mut written = 0u64;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            written += write_entry(&mut stdin, ino as u32 + 1, path, entry)?;
        }
        written += write_entry(&mut stdin, 0, "TRAILER!!!", &Entry::Bytes { data: vec![], mode: 0 })?;
        drop(stdin);
        let status = gz.wait()?;
        if !status.success() {
            bail!("gzip failed: {status}");
        }
        Ok(written)
    }
}

fn write_entry(w: &mut impl Write, ino: u32, path: &str, entry: &Entry) -> Result<u64> {
    let (mode, data, rdev) = match entry {
        Entry::Dir { mode } => (0o040000 | mode, vec![], (0, 0)),
        Entry::File { source, mode } => {
            (0o100000 | mode, std::fs::read(source).with_context(|| format!("read {}", source.display()))?, (0, 0))
        }
        Entry::Bytes { data, mode } => (0o100000 | mode, data.clone(), (0, 0)),
        Entry::Symlink { target } => (0o120777, target.as_bytes().to_vec(), (0, 0)),
        Entry::CharDev { major, minor, mode } => (0o020000 | mode, vec![], (*major, *minor)),
    };
    let mode = if path == "TRAILER!!!" { 0 } else { mode };
    let nlink = if matches!(entry, Entry::Dir { .. }) { 2 } else { 1 };
    let name_len = path.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check: 13 fields of 8 hex digits.
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0,
        0,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        0
    );
    let mut n = 0u64;
    w.write_all(header.as_bytes())?;
    w.write_all(path.as_bytes())?;
    w.write_all(&[0])?;
    n += (header.len() + name_len) as u64;
    let pad = (4 - n % 4) % 4;
    w.write_all(&vec![0; pad as usize])?;
    n += pad;
    w.write_all(&data)?;
    n += data.len() as u64;
    let pad = (4 - n % 4) % 4;
    w.write_all(&vec![0; pad as usize])?;
    Ok(n + pad)
}
