//! A small tmpfs to put a store on and fill until `ENOSPC` (a disk that fails, issue 15 §4).
//! Mounting needs root (CAP_SYS_ADMIN): the tests run as root here and in CI. Without it a test
//! is skipped, loudly, except under `CI=true`, where that is a failure.

#![allow(dead_code)] // each includer uses a part of it

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_fleet::workflow::{Outcome, StepCtx, StepResult, Workflow};
use tempfile::TempDir;

/// The tmpfs the store lives on: small, so that filling it is quick.
const DISK_SIZE: &str = "4m";

/// A tmpfs mounted on a temp directory, unmounted when dropped (also when a test fails).
pub struct SmallDisk {
    mount_point: TempDir,
}

impl SmallDisk {
    /// Mounts it, or returns `None` (outside CI only) when this process may not mount.
    pub fn mount() -> Option<SmallDisk> {
        let mount_point = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_SIZE}"), "tmpfs"])
            .arg(mount_point.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { mount_point }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => format!("cannot run mount: {e}"),
                };
                let message = format!(
                    "cannot mount a tmpfs ({why}): the disk-full tests need root (CAP_SYS_ADMIN)"
                );
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true: {message}; these tests must not be skipped in CI"
                );
                // Straight to stderr: the harness hides `eprintln!` of a passing test.
                let _ = std::io::stderr()
                    .write_all(format!("\nSKIPPED disk-full test: {message}\n").as_bytes());
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Writes a file until the disk is full (`ENOSPC`); deleting it frees the space.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let path = self.mount_point.path();
        let ok = Command::new("umount")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success())
            // Still busy (a process holding the store): detach it now, freed when closed.
            || Command::new("umount")
                .arg("-l")
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot unmount the tmpfs on {}", path.display());
        }
    }
}

/// An instance that only waits: each start is one commit of its state's bytes (what fills a
/// small disk).
pub struct Parked;

impl Workflow for Parked {
    const NAME: &'static str = "parked";
    const VERSION: u32 = 1;
    type State = Vec<u8>;
    type Signal = ();
    async fn step(&self, _ctx: &mut StepCtx<()>, s: Vec<u8>) -> StepResult<Vec<u8>> {
        Ok(Outcome::wait(s))
    }
}
