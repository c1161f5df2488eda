//! A task's workspace on its host (SPEC §4 Prepare workspace) and the receipt read back from it
//! (Verify receipt): one bare mirror of the repository per host and repository, and one git
//! clone per task (at [`TaskNames::clone_dir`], on [`TaskNames::branch`]) that borrows the
//! mirror's objects (alternates), so that everything git writes for the task lives inside its
//! work directory (sandboxed agents can commit). Preparing is idempotent: a re-run after a crash
//! finds the clone and reuses it (a worktree made by an earlier version too). Everything is a
//! shell script run through [`Shell`], so local and SSH hosts share it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::io::shell::{Shell, ShellError, quote};
use crate::steps::names::TaskNames;

/// Cloning a big repository takes a while; this bounds it.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error(transparent)]
    Shell(#[from] ShellError),
    /// The repository has no such branch (nothing was pushed to it).
    #[error("the repository has no branch {branch}")]
    NoBranch { branch: String },
    #[error("{what} failed on {host}: {detail}")]
    Git {
        what: &'static str,
        host: String,
        detail: String,
    },
}

/// Where a task works, as recorded in its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub host: String,
    pub mirror: String,
    pub work_dir: String,
    pub branch: String,
    /// Branch the work started from.
    pub base: String,
    /// Commit the task branch was created at: the receipt counts commits after it.
    pub base_sha: String,
}

/// What the task branch holds beyond its base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchWork {
    pub head_sha: String,
    /// `(sha, subject)`, oldest first.
    pub commits: Vec<(String, String)>,
    pub files_changed: Vec<String>,
}

/// The mirror's directory name: readable, and distinct for distinct repositories.
pub fn mirror_name(repo: &str) -> String {
    let readable: String = repo
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = repo.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{readable}-{hash:016x}.git")
}

/// The host's mirror of `repo` under `work_root`.
pub fn mirror_dir(work_root: &str, repo: &str) -> String {
    format!("{work_root}/.mirrors/{}", mirror_name(repo))
}

/// The shell lines that make `$mirror` a bare mirror of `$repo` (cloned once, under a lock
/// shared by the host's tasks) and fetch it; remote branches land in `refs/remotes/origin/*`, so
/// a fetch never touches task branches.
const MIRROR_SCRIPT: &str = r#"mkdir -p "$(dirname "$mirror")"
exec 9> "$mirror.lock"
flock 9
if [ ! -d "$mirror" ]; then
  rm -rf "$mirror.tmp"
  git clone --quiet --bare -- "$repo" "$mirror.tmp" >&2
  git -C "$mirror.tmp" config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*'
  mv "$mirror.tmp" "$mirror"
fi
git -C "$mirror" fetch --quiet --prune origin >&2
[ -n "$base" ] || base=$(git -C "$mirror" symbolic-ref --short HEAD)
git -C "$mirror" rev-parse --verify --quiet "refs/remotes/origin/$base^{commit}" > /dev/null || {
  echo "the repository has no branch '$base'" >&2; exit 4; }
"#;

/// The shell lines that print what `$head` holds beyond `$base_sha` (see [`parse_work`]).
const WORK_SCRIPT: &str = r#"git -C "$mirror" rev-parse --verify "$head^{commit}"
echo ---
git -C "$mirror" log --reverse --format='%H %s' "$base_sha..$head"
echo ---
git -C "$mirror" diff --name-only "$base_sha" "$head"
"#;

/// Reads what `branch` holds beyond `base` in the repository itself (fetched into a mirror
/// under `root`): how a pull agent's receipt is checked, never taken on its word.
pub async fn pushed_work(
    shell: &dyn Shell,
    root: &str,
    repo: &str,
    base: Option<&str>,
    branch: &str,
) -> Result<(String, String, BranchWork), WorkspaceError> {
    let mirror = mirror_dir(root, repo);
    let script = format!(
        r#"set -eu
repo={repo}; mirror={mirror}; branch={branch}; base={base}
{MIRROR_SCRIPT}
head="refs/remotes/origin/$branch"
git -C "$mirror" rev-parse --verify --quiet "$head^{{commit}}" > /dev/null || exit 5
base_sha=$(git -C "$mirror" merge-base "refs/remotes/origin/$base" "$head")
printf 'base=%s\nbase_sha=%s\n===\n' "$base" "$base_sha"
{WORK_SCRIPT}"#,
        repo = quote(repo)?,
        mirror = quote(&mirror)?,
        branch = quote(branch)?,
        base = quote(base.unwrap_or(""))?,
    );
    let out = shell.run(&script, b"", PREPARE_TIMEOUT).await?;
    if out.status == Some(5) {
        return Err(WorkspaceError::NoBranch {
            branch: branch.to_string(),
        });
    }
    if !out.success() {
        return Err(WorkspaceError::Git {
            what: "reading the pushed branch",
            host: shell.host().to_string(),
            detail: out.error_tail(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (header, rest) = text.split_once("===\n").unwrap_or(("", &text));
    let field = |key: &str| {
        header
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
            .unwrap_or_default()
    };
    Ok((field("base"), field("base_sha"), parse_work(rest)))
}

/// Pushes the task branch of `ws` to the repository (`origin` of the host's mirror) unless the
/// repository has that commit on the branch already. Returns whether it pushed. The host's own
/// git credentials are used: the daemon's forge token never reaches a host.
pub async fn push_branch(shell: &dyn Shell, ws: &Workspace) -> Result<bool, WorkspaceError> {
    let script = format!(
        r#"set -eu
wt={wt}; branch={branch}
local=$(git -C "$wt" rev-parse --verify "refs/heads/$branch")
remote=$(git -C "$wt" ls-remote origin "refs/heads/$branch" | cut -f1)
if [ "$local" = "$remote" ]; then echo same; exit 0; fi
git -C "$wt" push --quiet origin "refs/heads/$branch:refs/heads/$branch" >&2
echo pushed
"#,
        wt = quote(&ws.work_dir)?,
        branch = quote(&ws.branch)?,
    );
    let out = shell.run(&script, b"", PREPARE_TIMEOUT).await?;
    if !out.success() {
        return Err(WorkspaceError::Git {
            what: "pushing the task branch",
            host: shell.host().to_string(),
            detail: out.error_tail(),
        });
    }
    Ok(out.text().trim() == "pushed")
}

/// Creates (or finds) the task's worktree, named by `names`. `base = None` uses the
/// repository's default branch.
pub async fn prepare(
    shell: &dyn Shell,
    work_root: &str,
    repo: &str,
    base: Option<&str>,
    names: TaskNames,
    task_id: u64,
) -> Result<Workspace, WorkspaceError> {
    let mirror = mirror_dir(work_root, repo);
    let work_dir = names.clone_dir(work_root, task_id);
    let branch = names.branch(task_id);
    // The mirror is shared by the host's tasks: a lock serialises clone and fetch. Remote
    // branches are fetched to refs/remotes/origin/*, so a fetch never touches task branches.
    // The task's work directory is a clone of its own that borrows the mirror's objects
    // (alternates): everything git writes for the task (index, refs, new objects) stays inside
    // it, where a sandboxed agent may write. A work directory made by an earlier version (a
    // worktree whose git metadata lives in the mirror) is reused as it is.
    let script = format!(
        r#"set -eu
repo={repo}; mirror={mirror}; wt={wt}; branch={branch}; base={base}
{MIRROR_SCRIPT}
git -C "$mirror" config gc.pruneExpire never
if [ -d "$wt/.git" ]; then
  # A clone: bring its view of the repository's branches up to date.
  git -C "$wt" -c maintenance.auto=false fetch --quiet --prune "$mirror" \
    '+refs/remotes/origin/*:refs/remotes/origin/*' >&2
elif [ ! -f "$wt/.git" ]; then
  rm -rf "$wt"
  mkdir -p "$wt"
  git -C "$wt" init --quiet --template=
  echo "$mirror/objects" > "$wt/.git/objects/info/alternates"
  git -C "$wt" remote add origin "$repo"
  git -C "$wt" -c maintenance.auto=false fetch --quiet "$mirror" \
    '+refs/remotes/origin/*:refs/remotes/origin/*' >&2
  if git -C "$mirror" rev-parse --verify --quiet "refs/heads/$branch" > /dev/null; then
    # Left by an earlier version in the mirror (its worktree is gone): go on from there.
    git -C "$wt" -c maintenance.auto=false fetch --quiet "$mirror" \
      "+refs/heads/$branch:refs/heads/$branch" >&2
  elif git -C "$wt" rev-parse --verify --quiet "refs/remotes/origin/$branch" > /dev/null; then
    # The branch was pushed from another host (an earlier round): go on from there.
    git -C "$wt" branch --quiet --no-track "$branch" "refs/remotes/origin/$branch"
  else
    git -C "$wt" branch --quiet --no-track "$branch" "refs/remotes/origin/$base^{{commit}}"
  fi
  git -C "$wt" checkout --quiet "$branch" >&2
fi
base_sha=$(git -C "$wt" merge-base "refs/remotes/origin/$base" "refs/heads/$branch")
printf 'base=%s\nbase_sha=%s\n' "$base" "$base_sha"
"#,
        repo = quote(repo)?,
        mirror = quote(&mirror)?,
        wt = quote(&work_dir)?,
        branch = quote(&branch)?,
        base = quote(base.unwrap_or(""))?,
    );
    let out = shell.run(&script, b"", PREPARE_TIMEOUT).await?;
    if !out.success() {
        return Err(WorkspaceError::Git {
            what: "preparing the workspace",
            host: shell.host().to_string(),
            detail: out.error_tail(),
        });
    }
    let text = out.text();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    match (field("base"), field("base_sha")) {
        (Some(base), Some(base_sha)) if !base_sha.is_empty() => Ok(Workspace {
            host: shell.host().to_string(),
            mirror,
            work_dir,
            branch,
            base,
            base_sha,
        }),
        _ => Err(WorkspaceError::Git {
            what: "preparing the workspace",
            host: shell.host().to_string(),
            detail: format!("unexpected answer {text:?}"),
        }),
    }
}

/// The commits on the task branch after its base, read from git (never from the agent's word).
pub async fn branch_work(shell: &dyn Shell, ws: &Workspace) -> Result<BranchWork, WorkspaceError> {
    let script = format!(
        r#"set -eu
mirror={work_dir}; head="refs/heads/"{branch}; base_sha={base_sha}
{WORK_SCRIPT}"#,
        work_dir = quote(&ws.work_dir)?,
        branch = quote(&ws.branch)?,
        base_sha = quote(&ws.base_sha)?,
    );
    let out = shell.run(&script, b"", READ_TIMEOUT).await?;
    if !out.success() {
        return Err(WorkspaceError::Git {
            what: "reading the task branch",
            host: shell.host().to_string(),
            detail: out.error_tail(),
        });
    }
    Ok(parse_work(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `head sha`, `---`, the commits (`sha subject`), `---`, the changed files.
fn parse_work(text: &str) -> BranchWork {
    let mut parts = text.split("---\n");
    let head_sha = parts.next().unwrap_or("").trim().to_string();
    let commits = parts
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (sha, subject) = l.split_once(' ').unwrap_or((l, ""));
            (sha.to_string(), subject.to_string())
        })
        .collect();
    let files_changed = parts
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    BranchWork {
        head_sha,
        commits,
        files_changed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::shell::LocalShell;
    use std::process::Command;

    /// The names of a store older than store ids.
    const OLD: TaskNames = TaskNames::new(None);

    fn git(dir: &std::path::Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-C"])
            .arg(dir)
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    fn origin(dir: &std::path::Path) -> String {
        let origin = dir.join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("README"), "hi\n").unwrap();
        git(&origin, &["add", "README"]);
        git(&origin, &["commit", "-q", "-m", "first"]);
        origin.display().to_string()
    }

    #[tokio::test]
    async fn a_task_gets_a_worktree_on_its_branch_and_a_rerun_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = origin(dir.path());
        let root = dir.path().join("work").display().to_string();
        let shell = LocalShell::new("localhost", vec![]);
        let ws = prepare(&shell, &root, &repo, None, OLD, 7).await.unwrap();
        assert_eq!((ws.branch.as_str(), ws.base.as_str()), ("task/7", "main"));
        std::fs::write(format!("{}/new.txt", ws.work_dir), "x").unwrap();
        git(std::path::Path::new(&ws.work_dir), &["add", "new.txt"]);
        git(
            std::path::Path::new(&ws.work_dir),
            &["commit", "-q", "-m", "add new"],
        );
        let again = prepare(&shell, &root, &repo, None, OLD, 7).await.unwrap();
        assert_eq!(again, ws);
        let work = branch_work(&shell, &ws).await.unwrap();
        assert_eq!(work.commits.len(), 1);
        assert_eq!(work.commits[0].1, "add new");
        assert_eq!(work.files_changed, vec!["new.txt".to_string()]);
    }

    #[tokio::test]
    async fn everything_git_writes_for_the_task_stays_inside_its_work_dir() {
        let dir = tempfile::tempdir().unwrap();
        let repo = origin(dir.path());
        let root = dir.path().join("work").display().to_string();
        let shell = LocalShell::new("localhost", vec![]);
        let ws = prepare(&shell, &root, &repo, None, OLD, 3).await.unwrap();
        let wt = std::path::Path::new(&ws.work_dir);
        assert!(
            wt.join(".git").is_dir(),
            "a clone of its own, not a worktree"
        );
        let mirror_before = tree_listing(std::path::Path::new(&ws.mirror));
        std::fs::write(wt.join("new.txt"), "x").unwrap();
        git(wt, &["add", "new.txt"]);
        git(wt, &["commit", "-q", "-m", "add new"]);
        assert_eq!(
            tree_listing(std::path::Path::new(&ws.mirror)),
            mirror_before,
            "a commit in the work dir wrote into the mirror"
        );
        let work = branch_work(&shell, &ws).await.unwrap();
        assert_eq!(work.commits.len(), 1);
        let again = prepare(&shell, &root, &repo, None, OLD, 3).await.unwrap();
        assert_eq!(again, ws);
    }

    #[tokio::test]
    async fn a_worktree_made_by_the_previous_version_is_reused_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let repo = origin(dir.path());
        let root = dir.path().join("work");
        let shell = LocalShell::new("localhost", vec![]);
        // What the previous version made: the task branch in the mirror, a worktree on it.
        let mirror = root.join(".mirrors").join(mirror_name(&repo));
        std::fs::create_dir_all(root.join(".mirrors")).unwrap();
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &repo,
                &mirror.display().to_string(),
            ],
        );
        git(
            &mirror,
            &[
                "config",
                "remote.origin.fetch",
                "+refs/heads/*:refs/remotes/origin/*",
            ],
        );
        git(&mirror, &["fetch", "-q", "origin"]);
        let wt = root.join("5");
        git(
            &mirror,
            &[
                "worktree",
                "add",
                "-q",
                "-b",
                "task/5",
                &wt.display().to_string(),
                "refs/remotes/origin/main",
            ],
        );
        std::fs::write(wt.join("old.txt"), "x").unwrap();
        git(&wt, &["add", "old.txt"]);
        git(&wt, &["commit", "-q", "-m", "before the upgrade"]);
        let root = root.display().to_string();
        let ws = prepare(&shell, &root, &repo, None, OLD, 5).await.unwrap();
        assert!(wt.join(".git").is_file(), "the worktree was replaced");
        let work = branch_work(&shell, &ws).await.unwrap();
        assert_eq!(work.commits.len(), 1);
        assert_eq!(work.commits[0].1, "before the upgrade");
    }

    /// Every file under `dir` with its size and modification time.
    fn tree_listing(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    out.push((
                        e.path().display().to_string(),
                        m.len(),
                        m.modified().unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn an_untouched_branch_has_no_commits() {
        let dir = tempfile::tempdir().unwrap();
        let repo = origin(dir.path());
        let root = dir.path().join("work").display().to_string();
        let shell = LocalShell::new("localhost", vec![]);
        let ws = prepare(&shell, &root, &repo, None, OLD, 1).await.unwrap();
        let work = branch_work(&shell, &ws).await.unwrap();
        assert!(work.commits.is_empty() && work.files_changed.is_empty());
    }

    #[tokio::test]
    async fn an_unknown_base_branch_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let repo = origin(dir.path());
        let root = dir.path().join("work").display().to_string();
        let shell = LocalShell::new("localhost", vec![]);
        let err = prepare(&shell, &root, &repo, Some("nope"), OLD, 1)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no branch 'nope'"), "{err}");
    }

    #[test]
    fn mirror_names_are_readable_and_distinct() {
        let a = mirror_name("https://forge.example.org/acme/widgets.git");
        let b = mirror_name("/srv/git/widgets");
        assert!(a.starts_with("widgets-") && b.starts_with("widgets-"));
        assert_ne!(a, b);
    }
}
