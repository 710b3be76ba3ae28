//! One writer per output folder: an exclusive advisory lock on a file in
//! the folder, held for the life of a [`FolderLock`].
//!
//! `label`, `train`, `eval` and `experiment` take one before they write. A
//! second writer fails at once with the holder's pid and command. Workers
//! of one sharded job (`--shard i/N`) lock their own shard's file, so they
//! do not contend. The OS releases the lock when its process ends, however
//! it ends; a clean exit also empties the file, so a file that still names
//! a holder when its lock is free was left by a crash, and the next writer
//! says so ([`FolderLock::stale`]) and takes over.

use crate::error::{Result, TrainError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock on an output folder (or one shard of it).
#[derive(Debug)]
pub struct FolderLock {
    file: File,
    path: PathBuf,
    stale: Option<String>,
}

/// The lock file of `dir` for `shard` (a shard tag such as `w0of2`, or none
/// for the whole folder).
pub fn lock_path(dir: &Path, shard: Option<&str>) -> PathBuf {
    match shard {
        Some(tag) => dir.join(format!(".sdrpn-lock-{tag}")),
        None => dir.join(".sdrpn-lock"),
    }
}

/// The holder a lock file names, on one line.
fn describe_holder(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "a process that has not written its name yet".into()
    } else {
        line
    }
}

impl FolderLock {
    /// Takes the lock of `dir` (created if missing) for `command` (e.g.
    /// `"sdrpn label"`), or fails naming the process that holds it.
    pub fn acquire(dir: &Path, shard: Option<&str>, command: &str) -> Result<FolderLock> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = lock_path(dir, shard);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).ok();
                return Err(TrainError::config(
                    "output folder",
                    format!(
                        "{} is being written by another process ({}); wait for it to finish or use another folder",
                        dir.display(),
                        describe_holder(&holder)
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(TrainError::io(&path, e)),
        }
        let mut previous = String::new();
        file.read_to_string(&mut previous)
            .map_err(|e| TrainError::io(&path, e))?;
        let stale = (!previous.trim().is_empty()).then(|| describe_holder(&previous));
        if let Some(holder) = &stale {
            eprintln!(
                "note: {}: the previous writer ({holder}) did not finish cleanly; its finished work is kept and the rest is redone",
                dir.display()
            );
        }
        let stamp = format!(
            "pid {} command {command} since {}\n",
            std::process::id(),
            humantime_now()
        );
        file.set_len(0).map_err(|e| TrainError::io(&path, e))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(stamp.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(FolderLock { file, path, stale })
    }

    /// The holder a crashed earlier writer left in the lock file, if any
    /// (its work is resumed as after any interruption).
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        // A clean release leaves an empty file (the lock itself goes with
        // the file handle).
        self.file.set_len(0).ok();
    }
}

/// Seconds since the Unix epoch, as text.
fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix time {secs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sdrpn-lock-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        dir
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holders_pid_and_shards_do_not_contend() {
        let dir = scratch("second");
        let held = FolderLock::acquire(&dir, None, "sdrpn label").unwrap();
        assert!(held.stale().is_none());
        let err = FolderLock::acquire(&dir, None, "sdrpn label")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("sdrpn label"),
            "{err}"
        );
        let a = FolderLock::acquire(&dir, Some("w0of2"), "sdrpn eval").unwrap();
        let b = FolderLock::acquire(&dir, Some("w1of2"), "sdrpn eval").unwrap();
        assert!(FolderLock::acquire(&dir, Some("w1of2"), "sdrpn eval").is_err());
        drop((a, b));
        // Released cleanly: the next writer gets it and sees no stale holder.
        drop(held);
        let again = FolderLock::acquire(&dir, None, "sdrpn train").unwrap();
        assert!(again.stale().is_none());
        drop(again);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_crashed_writers_lock_is_reported_as_stale_and_taken_over() {
        let dir = scratch("stale");
        std::fs::create_dir_all(&dir).unwrap();
        // What a writer killed with -9 leaves: its line, and no lock held.
        std::fs::write(
            lock_path(&dir, None),
            "pid 4242 command sdrpn eval since unix time 1\n",
        )
        .unwrap();
        let lock = FolderLock::acquire(&dir, None, "sdrpn eval").unwrap();
        assert_eq!(
            lock.stale(),
            Some("pid 4242 command sdrpn eval since unix time 1")
        );
        drop(lock);
        std::fs::remove_dir_all(dir).ok();
    }
}
