//! Files written so that a reader (the daemon after a restart, a container runtime reading
//! its CNI configuration) never sees half of one.
use std::{fs, io::Write, path::Path};

/// A file operation that failed, with what it was.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct FileError {
    pub what: String,
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(what: impl Into<String>, source: std::io::Error) -> FileError {
        FileError { what: what.into(), source }
    }
}

/// Temp file in the same directory, fsync, rename over, fsync the directory.
pub fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let invalid = |what: &str| FileError::new(what, std::io::ErrorKind::InvalidInput.into());
    let dir = target.parent().ok_or_else(|| invalid("state file without a directory"))?;
    let name = target.file_name().ok_or_else(|| invalid("state file without a name"))?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<(), FileError> {
        let mut f =
            fs::File::create(&tmp).map_err(|e| FileError::new(format!("cannot create {}", tmp.display()), e))?;
        let write_failed = |e| FileError::new(format!("cannot write {}", tmp.display()), e);
        f.write_all(bytes).map_err(write_failed)?;
        f.sync_all().map_err(write_failed)?;
        fs::rename(&tmp, target).map_err(|e| FileError::new(format!("cannot move {} into place", tmp.display()), e))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
