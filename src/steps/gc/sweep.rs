//! Removing what a [`HostPlan`] names, with one script on the host: the task's clone and run
//! directories, then its branch's refs in the mirror (under the mirror's lock, the one Prepare
//! takes). The mirror itself stays: other tasks' clones borrow its objects, and it never
//! prunes objects (`gc.pruneExpire never`), so no clone loses one. Only refs named after the
//! task's own branch are deleted, each by its exact name. Nothing is removed while one of the
//! task's runs is still alive there.

use std::time::Duration;

use thiserror::Error;

use crate::io::shell::{Shell, ShellError, quote};

use super::plan::HostPlan;

/// Removing a big clone takes a while; the mirror's lock may be held by a fetch.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(300);

/// The script's exit status when a run is still alive.
const RUNNING: i32 = 3;

#[derive(Debug, Error)]
pub enum SweepError {
    /// The host could not be reached (or answered too late): tried again later.
    #[error("{0}")]
    Unreachable(ShellError),
    #[error("{host}: run directory {dir} belongs to a process still running: kept")]
    Running { host: String, dir: String },
    #[error("{host}: {detail}")]
    Failed { host: String, detail: String },
}

/// What the script removed, as it said: `removed <path>` and `deleted <ref>` lines.
pub async fn sweep(shell: &dyn Shell, p: &HostPlan) -> Result<Vec<String>, SweepError> {
    let failed = |detail: String| SweepError::Failed {
        host: p.host.clone(),
        detail,
    };
    let quoted = |v: &str| quote(v).map_err(|e| failed(e.to_string()));
    let runs = p
        .runs
        .iter()
        .map(|d| quoted(d))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    let script = format!(
        r#"set -u
mirror={mirror}; branch={branch}
for d in {runs}; do
  if [ -f "$d/pid" ] && [ ! -f "$d/exit" ] && kill -0 "$(cat "$d/pid")" 2> /dev/null; then
    echo "$d"; exit {RUNNING}
  fi
done
for d in {clone} {runs}; do
  if [ -e "$d" ] || [ -L "$d" ]; then
    rm -rf -- "$d" || exit 1
    echo "removed $d"
  fi
done
if [ -d "$mirror" ]; then
  exec 9> "$mirror.lock"
  flock 9
  # A worktree of an earlier version whose directory just went: forget it.
  if [ -d "$mirror/worktrees" ]; then git -C "$mirror" worktree prune >&2 || exit 1; fi
  for ref in "refs/heads/$branch" "refs/remotes/origin/$branch"; do
    if git -C "$mirror" show-ref --verify --quiet "$ref"; then
      git -C "$mirror" update-ref -d "$ref" >&2 || exit 1
      echo "deleted $ref"
    fi
  done
fi
"#,
        mirror = quoted(&p.mirror)?,
        branch = quoted(&p.branch)?,
        clone = quoted(&p.clone)?,
    );
    let out = shell
        .run(&script, b"", SWEEP_TIMEOUT)
        .await
        .map_err(|e| match e {
            e if e.is_unreachable() => SweepError::Unreachable(e),
            e => failed(e.to_string()),
        })?;
    match out.status {
        Some(0) => Ok(out.text().lines().map(str::to_string).collect()),
        Some(RUNNING) => Err(SweepError::Running {
            host: p.host.clone(),
            dir: out.text(),
        }),
        _ => Err(failed(format!(
            "removing the task's leftovers failed: {}",
            out.error_tail()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::shell::LocalShell;
    use std::path::Path;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A work root with a mirror holding refs of tasks 7 and 17, a clone and a run of task 7.
    fn work_root(dir: &Path) -> HostPlan {
        let origin = dir.join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        git(&origin, &["commit", "-q", "--allow-empty", "-m", "first"]);
        let root = dir.join("w");
        let mirror = root.join(".mirrors/o.git");
        std::fs::create_dir_all(root.join(".runs/7-1")).unwrap();
        std::fs::create_dir_all(root.join("7/sub")).unwrap();
        git(
            dir,
            &[
                "clone",
                "-q",
                "--bare",
                origin.to_str().unwrap(),
                mirror.to_str().unwrap(),
            ],
        );
        let head = git(&mirror, &["rev-parse", "HEAD"]);
        for r in [
            "refs/heads/task/7",
            "refs/remotes/origin/task/7",
            "refs/heads/task/17",
            "refs/remotes/origin/task/17",
            "refs/heads/task/7-abcdef",
        ] {
            git(&mirror, &["update-ref", r, &head]);
        }
        let root = root.display().to_string();
        HostPlan {
            host: "localhost".into(),
            clone: format!("{root}/7"),
            runs: vec![format!("{root}/.runs/7-1")],
            mirror: mirror.display().to_string(),
            branch: "task/7".into(),
            work_root: root,
        }
    }

    fn refs(mirror: &str) -> Vec<String> {
        git(Path::new(mirror), &["for-each-ref", "--format=%(refname)"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[tokio::test]
    async fn the_tasks_dirs_and_refs_go_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let p = work_root(dir.path());
        let shell = LocalShell::new("localhost", vec![]);
        let said = sweep(&shell, &p).await.unwrap();
        assert_eq!(
            said,
            vec![
                format!("removed {}", p.clone),
                format!("removed {}", p.runs[0]),
                "deleted refs/heads/task/7".to_string(),
                "deleted refs/remotes/origin/task/7".to_string(),
            ]
        );
        assert!(!Path::new(&p.clone).exists() && !Path::new(&p.runs[0]).exists());
        let left = refs(&p.mirror);
        for r in [
            "refs/heads/main",
            "refs/heads/task/17",
            "refs/remotes/origin/task/17",
            "refs/heads/task/7-abcdef",
        ] {
            assert!(left.contains(&r.to_string()), "{r} gone: {left:?}");
        }
        assert!(!left.iter().any(|r| r.ends_with("task/7")), "{left:?}");
        // Again: nothing left to remove, nothing said.
        assert_eq!(sweep(&shell, &p).await.unwrap(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn nothing_goes_while_a_run_of_the_task_is_alive() {
        let dir = tempfile::tempdir().unwrap();
        let p = work_root(dir.path());
        std::fs::write(format!("{}/pid", p.runs[0]), std::process::id().to_string()).unwrap();
        let shell = LocalShell::new("localhost", vec![]);
        let err = sweep(&shell, &p).await.unwrap_err();
        assert!(matches!(err, SweepError::Running { .. }), "{err}");
        assert!(Path::new(&p.clone).exists() && Path::new(&p.runs[0]).exists());
        // Once it has exited, everything goes.
        std::fs::write(format!("{}/exit", p.runs[0]), "0").unwrap();
        assert_eq!(sweep(&shell, &p).await.unwrap().len(), 4);
    }
}
