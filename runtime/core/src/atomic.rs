//! Writing files atomically: a uniquely named temporary file beside the target, then a rename.
//!
//! Every file the tools write (bundles' manifests, `.npy` arrays, overlays, reports, records)
//! goes through here, so a failed or killed run leaves each file complete or absent; keep it so.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes the temporary files of concurrent writes in one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `path` through `write`; readers see either the old file or the complete new one, never a partial one. Temporary files a killed process left for `path` are removed first ([`sweep_stale`]).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    sweep_stale(path);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}-{}.partial",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp: PathBuf = path.with_file_name(name);
    let result = File::create(&tmp).and_then(|file| {
        let mut writer = BufWriter::new(file);
        write(&mut writer)?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        std::fs::rename(&tmp, path)
    });
    if result.is_err() {
        // Best effort: the temporary file may not exist, and the first error is the one to report.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes what killed processes left beside `path` while writing it: temporary files `NAME.PID-N.partial` and temporary directories `NAME.partial-PID` and `NAME.old-PID`, for every PID that no longer runs. Best effort: what cannot be listed or removed stays.
pub fn sweep_stale(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Some(name) = name.to_str() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file.to_str().and_then(|f| stale_pid(f, name)) else {
            continue;
        };
        if pid != std::process::id() && !process_runs(pid) {
            let p = entry.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// The PID in `file` when it is one of the temporary names of `name` (see [`sweep_stale`]).
fn stale_pid(file: &str, name: &str) -> Option<u32> {
    let rest = file.strip_prefix(name)?;
    let pid = if let Some(tmp) = rest
        .strip_prefix('.')
        .and_then(|r| r.strip_suffix(".partial"))
    {
        tmp.split_once('-')?.0
    } else {
        rest.strip_prefix(".partial-")
            .or_else(|| rest.strip_prefix(".old-"))?
    };
    pid.parse().ok()
}

/// Whether process `pid` is alive (on systems without `/proc`, always taken as alive).
fn process_runs(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("encoder failed"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(write_atomic(&dir.path().join("no/such/f"), |w| w.write_all(b"x")).is_err());
    }

    #[test]
    fn leftovers_of_dead_writers_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.bin");
        // PID 4194304 is beyond Linux's pid_max; this process is alive.
        let dead = 4_194_304u32;
        let me = std::process::id();
        let names = [
            format!("run.bin.{dead}-0.partial"),
            format!("run.bin.{me}-7.partial"),
            format!("run.bin.partial-{dead}"),
            format!("run.bin.old-{dead}"),
            format!("other.bin.{dead}-0.partial"),
            "run.bin.notes".to_string(),
        ];
        for n in &names {
            if n.contains(".partial-") || n.contains(".old-") {
                std::fs::create_dir(dir.path().join(n)).unwrap();
                std::fs::write(dir.path().join(n).join("x"), b"x").unwrap();
            } else {
                std::fs::write(dir.path().join(n), b"x").unwrap();
            }
        }
        write_atomic(&path, |w| w.write_all(b"new")).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec![
            format!("other.bin.{dead}-0.partial"),
            "run.bin".to_string(),
            format!("run.bin.{me}-7.partial"),
            "run.bin.notes".to_string(),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }
}
