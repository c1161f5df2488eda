//! `docs/pull-agents.md` is executable: its ```sh blocks run, in order and in one bash session
//! (`set -Eeuo pipefail`), against a real daemon configured with the doc's ```toml block, and
//! the flow they describe must end with its tasks `completed`. A block that fails fails the
//! test, naming the block's line in the doc.

#[path = "support/daemon.rs"]
mod daemon;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use daemon::{Fleet, REGISTRATION_TOKEN, Setup, TOKEN, story};

const DOC: &str = include_str!("../docs/pull-agents.md");
const DOC_PATH: &str = "docs/pull-agents.md";
/// The whole doc's run; it takes a few seconds.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A fenced block of the doc: the line of its opening fence and its text.
struct Block {
    line: usize,
    text: String,
}

/// The blocks fenced as ```` ```lang ````, in order. Other fenced blocks are skipped whole
/// (a fence line inside them is their text), as Markdown reads them.
fn fenced(doc: &str, lang: &str) -> Vec<Block> {
    enum In {
        Text,
        Wanted(Block),
        Other,
    }
    let mut blocks = Vec::new();
    let mut at = In::Text;
    for (n, line) in doc.lines().enumerate() {
        let fence = line.trim_end().strip_prefix("```");
        at = match (at, fence) {
            (In::Text, Some(info)) if info.trim() == lang => In::Wanted(Block {
                line: n + 1,
                text: String::new(),
            }),
            (In::Text, Some(_)) => In::Other,
            (In::Wanted(b), Some("")) => {
                blocks.push(b);
                In::Text
            }
            (In::Wanted(mut b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
                In::Wanted(b)
            }
            (In::Other, Some("")) => In::Text,
            (other, _) => other,
        };
    }
    if let In::Wanted(b) = at {
        panic!("the ```{lang} block at line {} is never closed", b.line);
    }
    blocks
}

/// One bash script of all the blocks: strict mode, and a trap that names the failing block.
fn script(blocks: &[Block], doc_path: &str) -> String {
    let mut s = String::from(
        "set -Eeuo pipefail\n\
         trap 'rc=$?; [ \"$rc\" = 0 ] || echo \"FAILED: the sh block at $DOC_PATH:$BLOCK_LINE (exit $rc): $BASH_COMMAND\" >&2' EXIT\n",
    );
    s.push_str(&format!("DOC_PATH={doc_path}\n"));
    for b in blocks {
        s.push_str(&format!("BLOCK_LINE={}\n{}\n", b.line, b.text));
    }
    s.push_str("echo \"ALL BLOCKS PASSED\"\n");
    s
}

/// Runs `script` with bash in `dir`, with exactly `env` (plus PATH) in its environment;
/// kills it (and whatever it started) after `limit`.
async fn run_bash(script: &str, dir: &Path, env: &[(&str, String)], limit: Duration) -> Output {
    let file = dir.join("doc-blocks.sh");
    std::fs::write(&file, script).unwrap();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&file)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        // No one's own git or curl configuration.
        .env("HOME", dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("TMPDIR", dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().expect("bash");
    let pid = child.id().unwrap() as i32;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: kill(2) of the process group bash leads, which this test started.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            panic!("the doc's blocks did not finish within {limit:?}");
        }
    }
}

/// Whether the tools the doc's blocks use are here. Under `CI=true` a missing one is a failure
/// (scripts/test installs them); elsewhere the test says what is missing and skips.
fn tools_or_skip() -> bool {
    let missing: Vec<&str> = ["bash", "curl", "jq", "git"]
        .into_iter()
        .filter(|tool| {
            std::process::Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| !s.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let message = format!(
        "{} missing: the blocks of {DOC_PATH} need them (scripts/test installs them)",
        missing.join(", ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
    eprintln!("SKIPPED: {message}");
    false
}

fn shown(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn the_pull_agent_guide_runs_as_written_and_completes_its_tasks() {
    if !tools_or_skip() {
        return;
    }
    let toml = fenced(DOC, "toml");
    assert_eq!(toml.len(), 1, "{DOC_PATH} shows the daemon's config once");
    let blocks = fenced(DOC, "sh");
    assert!(blocks.len() >= 10, "{DOC_PATH} lost its examples");
    let fleet = Fleet::start(Setup {
        extra: toml[0].text.clone(),
        server: "registration_token_env = \"E2E_FLEET_REGISTRATION_TOKEN\"".into(),
        ..Setup::default()
    })
    .await;
    let shell_dir = fleet.path("agent");
    std::fs::create_dir(&shell_dir).unwrap();
    let started = Instant::now();
    let script = format!(
        "{}\nprintf '%s\\n' \"$SHA\" > sha.txt\n",
        script(&blocks, DOC_PATH)
    );
    let out = run_bash(
        &script,
        &shell_dir,
        &[
            ("FLEET", fleet.url.clone()),
            ("ADMIN_TOKEN", TOKEN.to_string()),
            ("REGISTRATION_TOKEN", REGISTRATION_TOKEN.to_string()),
        ],
        RUN_LIMIT,
    )
    .await;
    assert!(
        out.status.success(),
        "{}\n--- daemon log\n{}",
        shown(&out),
        fleet.log()
    );
    eprintln!(
        "{} sh blocks of {DOC_PATH} ran in {:?}",
        blocks.len(),
        started.elapsed()
    );

    // What the blocks did, as the coordinator sees it.
    let (status, list) = fleet.get("/tasks").await;
    assert_eq!(status, 200, "{list}");
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "the guide creates two tasks: {list:#}");
    for t in tasks {
        let id = t["id"].as_str().unwrap();
        let task = fleet.task(id).await;
        assert_eq!(task["status"], "completed", "{}", story(&task));
        assert_eq!(task["execution_mode"], "http_pull", "{}", story(&task));
        assert_eq!(task["assigned_agent"], "jeeves", "{}", story(&task));
        assert_eq!(task["attempt"], 1, "{}", story(&task));
    }
    // The first one delivered the pushed commit, verified by git.
    let sha = std::fs::read_to_string(shell_dir.join("sha.txt")).unwrap();
    let first = fleet.task(tasks[0]["id"].as_str().unwrap()).await;
    let receipt = &first["receipt"];
    assert_eq!(receipt["head_sha"], sha.trim(), "{}", story(&first));
    assert_eq!(receipt["files_changed"][0], "CHANGELOG.md");
    assert_eq!(
        receipt["branch"],
        fleet.branch(tasks[0]["id"].as_str().unwrap()).await
    );
    // The second one was completed on the agent's word: no receipt.
    let second = fleet.task(tasks[1]["id"].as_str().unwrap()).await;
    assert!(second["receipt"].is_null(), "{}", story(&second));
    // And the agent left.
    let agents = fleet.get("/agents").await.1;
    let jeeves = &agents["agents"][0];
    assert_eq!(
        (jeeves["name"].as_str(), jeeves["status"].as_str()),
        (Some("jeeves"), Some("deregistered")),
        "{agents:#}"
    );
}

#[tokio::test]
async fn a_failing_command_anywhere_in_a_block_fails_the_run_and_names_the_block() {
    if !tools_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let failing = [
        "false",
        "test 1 = 2",
        "x=$(false)",
        "false | cat",
        "f() { false; echo after; }\nf",
        "echo \"$UNSET_VARIABLE\"",
    ];
    for bad in failing {
        let doc = format!(
            "# doc\n\n```sh\necho first\n```\n\ntext\n\n```sh\n{bad}\necho not reached >&2\n```\n\n```sh\necho last\n```\n"
        );
        let blocks = fenced(&doc, "sh");
        assert_eq!(blocks.len(), 3);
        let out = run_bash(&script(&blocks, "doc.md"), dir.path(), &[], RUN_LIMIT).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`{bad}` passed: {}", shown(&out));
        assert!(
            err.contains("FAILED: the sh block at doc.md:9"),
            "`{bad}`: {}",
            shown(&out)
        );
        assert!(!err.contains("not reached"), "`{bad}`: {}", shown(&out));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("ALL BLOCKS PASSED"),
            "`{bad}`"
        );
    }
    let ok = fenced("```sh\ntrue\n```\n", "sh");
    let out = run_bash(&script(&ok, "doc.md"), dir.path(), &[], RUN_LIMIT).await;
    assert!(out.status.success(), "{}", shown(&out));
}

#[test]
fn only_blocks_fenced_exactly_as_sh_are_run_and_nested_fences_are_text() {
    let doc = "```sh\na\n```\n```shell\nb\n```\n```\n```sh\nnot a block\n```\n```sh \nc\n```\n";
    let blocks = fenced(doc, "sh");
    let texts: Vec<&str> = blocks.iter().map(|b| b.text.as_str()).collect();
    assert_eq!(texts, ["a\n", "c\n"]);
    assert_eq!(blocks[1].line, 11);
}
