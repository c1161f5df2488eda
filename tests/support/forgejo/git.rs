//! Git plumbing on the fake Forgejo's bare repositories: creation (initial commit on `main`, the
//! `post-receive` hook that logs pushes), reading refs and commits, merge checks and merges
//! (Forgejo's default "merge" style: always a merge commit, like `git merge --no-ff`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

pub const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// A commit as `git log` shows it.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub sha: String,
    pub parents: Vec<String>,
    pub tree: String,
    pub author_name: String,
    pub author_email: String,
    pub author_date: String,
    pub committer_name: String,
    pub committer_email: String,
    pub committer_date: String,
    pub message: String,
    /// (status letter A/M/D/…, path), from `git diff-tree`.
    pub files: Vec<(char, String)>,
}

fn command(repo: &Path, args: &[&str], identity: &str) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(repo).args(args);
    for (key, value) in [
        ("NAME", identity),
        ("EMAIL", &format!("{identity}@noreply.localhost")),
    ] {
        cmd.env(format!("GIT_AUTHOR_{key}"), value);
        cmd.env(format!("GIT_COMMITTER_{key}"), value);
    }
    cmd
}

/// Runs git with `input` on stdin; the exit status and stdout (trailing newline trimmed).
fn run(
    repo: &Path,
    args: &[&str],
    input: Option<&str>,
    identity: &str,
) -> Result<(bool, String), String> {
    let mut cmd = command(repo, args, identity);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("git {args:?}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("git {args:?} stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("git {args:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout)
        .trim_end_matches('\n')
        .to_string();
    if !out.status.success() && out.stdout.is_empty() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Ok((false, stderr));
    }
    Ok((out.status.success(), stdout))
}

/// Runs git and fails unless it exits 0.
pub fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    git_as(repo, args, None, "forgejo")
}

fn git_as(
    repo: &Path,
    args: &[&str],
    input: Option<&str>,
    identity: &str,
) -> Result<String, String> {
    match run(repo, args, input, identity)? {
        (true, out) => Ok(out),
        (false, err) => Err(format!("git {args:?} in {}: {err}", repo.display())),
    }
}

/// `git init --bare -b main`, an initial commit with a README, and the push-logging hook.
pub fn init_bare(path: &Path, full_name: &str, push_log: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
    git(path, &["init", "--quiet", "--bare", "-b", "main"])?;
    let readme = format!("# {full_name}\n");
    let blob = git_as(
        path,
        &["hash-object", "-w", "--stdin"],
        Some(&readme),
        "forgejo",
    )?;
    let tree = git_as(
        path,
        &["mktree"],
        Some(&format!("100644 blob {blob}\tREADME.md\n")),
        "forgejo",
    )?;
    let commit = git_as(
        path,
        &["commit-tree", &tree, "-m", "Initial commit"],
        None,
        "alice",
    )?;
    git(path, &["update-ref", "refs/heads/main", &commit])?;
    install_hook(path, full_name, push_log)
}

/// `post-receive` appends `<full_name> <old> <new> <ref>` per updated ref to `push_log`.
fn install_hook(path: &Path, full_name: &str, push_log: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let hook = path.join("hooks/post-receive");
    let script = format!(
        "#!/bin/sh\nwhile read old new ref; do\n  printf '%s %s %s %s\\n' '{full_name}' \"$old\" \"$new\" \"$ref\" >> '{}'\ndone\n",
        push_log.display()
    );
    std::fs::write(&hook, script).map_err(|e| format!("{}: {e}", hook.display()))?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", hook.display()))
}

/// The commit a ref (or sha) names, if any.
pub fn rev(repo: &Path, name: &str) -> Option<String> {
    let spec = format!("{name}^{{commit}}");
    git(repo, &["rev-parse", "--verify", "--quiet", &spec])
        .ok()
        .filter(|s| !s.is_empty())
}

pub fn branch_sha(repo: &Path, branch: &str) -> Option<String> {
    rev(repo, &format!("refs/heads/{branch}"))
}

pub fn merge_base(repo: &Path, a: &str, b: &str) -> Option<String> {
    git(repo, &["merge-base", a, b]).ok()
}

/// Whether `base` and `head` merge without conflicts (`git merge-tree --write-tree`, git ≥ 2.38).
pub fn mergeable(repo: &Path, base: &str, head: &str) -> bool {
    matches!(
        run(
            repo,
            &["merge-tree", "--write-tree", base, head],
            None,
            "forgejo"
        ),
        Ok((true, _))
    )
}

pub fn update_ref(repo: &Path, name: &str, sha: &str) -> Result<(), String> {
    git(repo, &["update-ref", name, sha]).map(|_| ())
}

/// (added lines, deleted lines, changed files) between two commits (`git diff --numstat`).
pub fn numstat(repo: &Path, from: &str, to: &str) -> (u64, u64, u64) {
    let Ok(out) = git(repo, &["diff", "--numstat", from, to]) else {
        return (0, 0, 0);
    };
    out.lines().fold((0, 0, 0), |(a, d, n), line| {
        let mut f = line.split('\t').map(|x| x.parse::<u64>().unwrap_or(0));
        (a + f.next().unwrap_or(0), d + f.next().unwrap_or(0), n + 1)
    })
}

/// Commits `git log <range…>` lists (newest first), with their changed files.
pub fn commits(repo: &Path, range: &[&str]) -> Result<Vec<CommitInfo>, String> {
    let mut args = vec![
        "log",
        "--format=%H%x1f%P%x1f%T%x1f%an%x1f%ae%x1f%aI%x1f%cn%x1f%ce%x1f%cI%x1f%B%x1e",
    ];
    args.extend_from_slice(range);
    let out = git(repo, &args)?;
    out.split('\x1e')
        .map(|r| r.trim_start_matches('\n'))
        .filter(|r| !r.is_empty())
        .map(|record| parse_commit(repo, record))
        .collect()
}

fn parse_commit(repo: &Path, record: &str) -> Result<CommitInfo, String> {
    let f: Vec<&str> = record.split('\x1f').collect();
    if f.len() < 10 {
        return Err(format!("unexpected git log record {record:?}"));
    }
    let files = git(
        repo,
        &[
            "diff-tree",
            "--no-commit-id",
            "-r",
            "--root",
            "--name-status",
            f[0],
        ],
    )?
    .lines()
    .filter_map(|l| {
        let (status, path) = l.split_once('\t')?;
        Some((status.chars().next()?, path.to_string()))
    })
    .collect();
    Ok(CommitInfo {
        sha: f[0].into(),
        parents: f[1].split_whitespace().map(str::to_string).collect(),
        tree: f[2].into(),
        author_name: f[3].into(),
        author_email: f[4].into(),
        author_date: f[5].into(),
        committer_name: f[6].into(),
        committer_email: f[7].into(),
        committer_date: f[8].into(),
        message: f[9].into(),
        files,
    })
}

/// Merges `head` into `refs/heads/<base>` with a merge commit made by `merger` (Forgejo's
/// default "merge" style). Returns (old base sha, merge commit sha); a conflict is an error.
pub fn merge(
    repo: &Path,
    base: &str,
    head: &str,
    message: &str,
    merger: &str,
) -> Result<(String, String), String> {
    let old = branch_sha(repo, base).ok_or_else(|| format!("base branch {base} does not exist"))?;
    let tree = match run(
        repo,
        &["merge-tree", "--write-tree", &old, head],
        None,
        merger,
    )? {
        (true, out) => out.lines().next().unwrap_or_default().to_string(),
        (false, out) => return Err(format!("merge conflict: {out}")),
    };
    let commit = git_as(
        repo,
        &["commit-tree", &tree, "-p", &old, "-p", head, "-m", message],
        None,
        merger,
    )?;
    git(
        repo,
        &["update-ref", &format!("refs/heads/{base}"), &commit, &old],
    )?;
    Ok((old, commit))
}

/// The diff hunk of `path` between `from` and `to` that contains new-file `line`, cut after
/// that line (what Forgejo stores as a review comment's `diff_hunk`); empty if none does.
pub fn diff_hunk(repo: &Path, from: &str, to: &str, path: &str, line: u64) -> String {
    let Ok(diff) = git(repo, &["diff", "-U3", from, to, "--", path]) else {
        return String::new();
    };
    let mut hunk: Vec<&str> = Vec::new();
    let mut next = 0u64;
    for l in diff.lines() {
        if let Some(start) = l.strip_prefix("@@ ").and_then(hunk_new_start) {
            hunk = vec![l];
            next = start;
            continue;
        }
        if hunk.is_empty() {
            continue; // the diff's header lines
        }
        hunk.push(l);
        if l.starts_with('-') || l.starts_with('\\') {
            continue;
        }
        if next == line {
            return hunk.join("\n");
        }
        next += 1;
    }
    String::new()
}

/// `-a,b +c,d @@` → c.
fn hunk_new_start(rest: &str) -> Option<u64> {
    let plus = rest.split_whitespace().find(|p| p.starts_with('+'))?;
    plus[1..].split(',').next()?.parse().ok()
}

/// A fork: `git clone --bare` of `source` at `path`, with the push-logging hook.
pub fn fork(source: &Path, path: &Path, full_name: &str, push_log: &Path) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let out = Command::new("git")
        .args(["clone", "--quiet", "--bare", "--"])
        .arg(source)
        .arg(path)
        .output()
        .map_err(|e| format!("git clone: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git clone {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    install_hook(path, full_name, push_log)
}

/// A commit on top of `parent` that writes `content` to `file` (through a throw-away index),
/// by `identity`; `branch` is set to it. Returns the commit.
pub fn commit_file(
    repo: &Path,
    parent: &str,
    branch: &str,
    file: &str,
    content: &str,
    message: &str,
    identity: &str,
) -> Result<String, String> {
    let index = repo.join(format!("fake-index-{}", std::process::id()));
    let with_index = |args: &[&str], input: Option<&str>| -> Result<String, String> {
        let mut cmd = command(repo, args, identity);
        cmd.env("GIT_INDEX_FILE", &index)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("git {args:?}: {e}"))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| format!("git {args:?} stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("git {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let result = (|| {
        with_index(&["read-tree", parent], None)?;
        let blob = with_index(&["hash-object", "-w", "--stdin"], Some(content))?;
        let info = format!("100644,{blob},{file}");
        with_index(&["update-index", "--add", "--cacheinfo", &info], None)?;
        let tree = with_index(&["write-tree"], None)?;
        let commit = with_index(&["commit-tree", &tree, "-p", parent, "-m", message], None)?;
        with_index(
            &["update-ref", &format!("refs/heads/{branch}"), &commit],
            None,
        )?;
        Ok(commit)
    })();
    let _ = std::fs::remove_file(&index);
    result
}

/// Copies `source_ref` of `source` (and its history) into `repo` as `refname`.
pub fn fetch_into(
    repo: &Path,
    source: &Path,
    source_ref: &str,
    refname: &str,
) -> Result<(), String> {
    let source = source.display().to_string();
    let spec = format!("+{source_ref}:{refname}");
    git(repo, &["fetch", "--quiet", &source, &spec]).map(|_| ())
}
