//! The proof that matters: a separate process (`examples/crash_worker.rs`) drives 200
//! workflows whose steps emit counted effects through the outbox and wait for signals; this test
//! SIGKILLs it at random moments at least 20 times, restarts it, keeps sending signals (a share
//! of them duplicated, unacknowledged ones re-sent), and finally checks that every workflow
//! ended, every effect was applied exactly once, no signal was lost, and each history agrees
//! with its final state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;

const WORKFLOWS: u32 = 200;
const MIN_KILLS: u32 = 20;

fn worker_binary() -> PathBuf {
    // target/<profile>/deps/crash-<hash> → target/<profile>/examples/crash_worker
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = profile_dir.join("examples").join("crash_worker");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test` builds examples; run `cargo build --examples`",
        bin.display()
    );
    bin
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(store: &Path, ledger: &Path) -> Worker {
        let mut child = Command::new(worker_binary())
            .args(["run"])
            .arg(store)
            .arg(ledger)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let w = Worker {
            child,
            stdin,
            lines,
        };
        let first = w
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("worker ready");
        assert_eq!(first, "ready");
        w
    }

    fn send(&mut self, cmd: &str) {
        // The worker may be dead already (killed): that is what the test is about.
        let _ = writeln!(self.stdin, "{cmd}");
    }

    fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
        self.lines.try_iter().collect()
    }
}

/// What the test knows has been committed.
#[derive(Default)]
struct Acks {
    ids: HashMap<u32, u64>,
    signals: HashSet<String>,
}

impl Acks {
    fn absorb(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["started", idx, id] => {
                let (idx, id) = (idx.parse().unwrap(), id.parse().unwrap());
                if let Some(prev) = self.ids.insert(idx, id) {
                    assert_eq!(prev, id, "a repeated start made a second instance");
                }
            }
            ["ok", key] => {
                self.signals.insert(key.to_string());
            }
            ["idle", _] => {}
            _ => panic!("worker refused something: {line}"),
        }
    }
}

fn signal_value(idx: u32, which: char) -> u32 {
    idx * 10 + (which as u32 - 'A' as u32)
}

#[test]
fn sigkilled_worker_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = dir.path().join("fleet.redb");
    let ledger = dir.path().join("ledger");
    std::fs::write(&ledger, "").unwrap();
    let mut rng = rand::rng();
    let mut acks = Acks::default();
    // Every signal of every workflow, in a random order (many arrive before their wait).
    let mut plan: Vec<(u32, char)> = (0..WORKFLOWS)
        .flat_map(|i| ['A', 'B', 'C'].map(|c| (i, c)))
        .collect();
    plan.shuffle(&mut rng);
    let chunk = plan.len().div_ceil(MIN_KILLS as usize);
    let mut sent_upto = 0;
    let mut kills = 0;
    let mut kills_mid_flight = 0;
    let started = Instant::now();

    while kills < MIN_KILLS || sent_upto < plan.len() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "crash test took too long"
        );
        let mut w = Worker::spawn(&store, &ledger);
        // Re-send everything not acknowledged yet: starts, then signals.
        for idx in 0..WORKFLOWS {
            if !acks.ids.contains_key(&idx) {
                w.send(&format!("start {idx}"));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while acks.ids.len() < WORKFLOWS as usize {
            assert!(Instant::now() < deadline, "starts not acknowledged");
            if let Ok(line) = w.lines.recv_timeout(Duration::from_millis(100)) {
                acks.absorb(&line);
            }
        }
        let next = (sent_upto + chunk).min(plan.len());
        for (n, &(idx, which)) in plan[..next].iter().enumerate() {
            let key = format!("{idx}-{which}");
            if acks.signals.contains(&key) && n < sent_upto && !rng.random_bool(0.05) {
                continue;
            }
            let cmd = format!(
                "signal {} {key} {which} {}",
                acks.ids[&idx],
                signal_value(idx, which)
            );
            w.send(&cmd);
            if rng.random_bool(0.25) {
                w.send(&cmd); // a duplicate delivery
            }
        }
        sent_upto = next;
        // Let it work for a random moment, then kill it mid-flight.
        // Half the kills come at once (mid-commit), half after a random moment of work.
        let pause = if rng.random_bool(0.5) {
            rng.random_range(0..3)
        } else {
            rng.random_range(3..80)
        };
        let until = Instant::now() + Duration::from_millis(pause);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match w.lines.recv_timeout(left) {
                Ok(line) => acks.absorb(&line),
                Err(_) => break,
            }
        }
        for line in w.kill() {
            acks.absorb(&line);
        }
        kills += 1;
        let unacked = plan[..sent_upto]
            .iter()
            .any(|(idx, which)| !acks.signals.contains(&format!("{idx}-{which}")));
        if unacked {
            kills_mid_flight += 1;
        }
    }

    // Final run: re-send what is unacknowledged until everything has ended, then stop cleanly.
    let mut w = Worker::spawn(&store, &ledger);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "workflows did not all finish");
        for &(idx, which) in &plan {
            let key = format!("{idx}-{which}");
            if !acks.signals.contains(&key) {
                w.send(&format!(
                    "signal {} {key} {which} {}",
                    acks.ids[&idx],
                    signal_value(idx, which)
                ));
            }
        }
        w.send("idle?");
        let mut idle = false;
        while let Ok(line) = w.lines.recv_timeout(Duration::from_millis(300)) {
            idle |= line == "idle true";
            acks.absorb(&line);
        }
        if idle && acks.signals.len() == plan.len() {
            break;
        }
    }
    drop(w.stdin);
    let status = w.child.wait().unwrap();
    assert!(status.success(), "clean shutdown");

    eprintln!("{kills_mid_flight} of {kills} kills hit signals in flight");
    assert!(
        kills_mid_flight > 0,
        "no kill hit the worker mid-flight: the test proves nothing"
    );
    check_final_state(&store, &ledger, &acks, kills);
}

fn check_final_state(store: &Path, ledger: &Path, acks: &Acks, kills: u32) {
    let out = Command::new(worker_binary())
        .arg("report")
        .arg(store)
        .arg(ledger)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        reports.len(),
        WORKFLOWS as usize,
        "one instance per workflow, none twice"
    );

    // Effects: every (workflow, phase) applied exactly once, under exactly one key.
    let text = std::fs::read_to_string(ledger).unwrap();
    let mut applied: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        applied
            .entry((w[1].parse().unwrap(), w[2].parse().unwrap()))
            .or_default()
            .push(w[0].to_string());
    }
    for idx in 0..WORKFLOWS {
        for phase in 0..4 {
            let keys = applied.get(&(idx, phase)).cloned().unwrap_or_default();
            assert_eq!(
                keys.len(),
                1,
                "effect ({idx},{phase}) applied {} times: {keys:?}",
                keys.len()
            );
        }
    }
    assert_eq!(applied.len(), (WORKFLOWS * 4) as usize);

    for r in &reports {
        let idx = r["idx"].as_u64().unwrap() as u32;
        assert_eq!(acks.ids[&idx], r["id"].as_u64().unwrap());
        assert_eq!(
            r["status"], "Completed",
            "workflow {idx} did not complete: {r}"
        );
        // No signal lost, none taken twice, each in its place.
        let got: Vec<u32> = serde_json::from_value(r["got"].clone()).unwrap();
        assert_eq!(
            got,
            vec![
                signal_value(idx, 'A'),
                signal_value(idx, 'B'),
                signal_value(idx, 'C')
            ]
        );
        let history = r["history"].as_array().unwrap();
        let count = |name: &str| history.iter().filter(|e| e.get(name).is_some()).count();
        assert_eq!(
            count("SignalReceived"),
            3,
            "duplicates are not recorded twice: {r}"
        );
        assert_eq!(count("SignalConsumed"), 3);
        assert_eq!(count("EffectQueued"), 4);
        assert_eq!(count("EffectDelivered"), 4);
        assert!(history.first().unwrap().get("Started").is_some());
        let last = history
            .iter()
            .rev()
            .find(|e| e.get("EffectDelivered").is_none());
        assert_eq!(
            last,
            Some(&serde_json::json!("Completed")),
            "deliveries may trail the end only"
        );
        // Steps are numbered without gaps or repeats: no step committed twice.
        let steps: Vec<u64> = history
            .iter()
            .filter_map(|e| e.get("Step").map(|s| s["step"].as_u64().unwrap()))
            .collect();
        assert_eq!(steps, (0..steps.len() as u64).collect::<Vec<_>>());
        let outcomes: Vec<&str> = history
            .iter()
            .filter_map(|e| e.get("Step").map(|s| s["outcome"].as_str().unwrap()))
            .filter(|o| *o != "wait")
            .collect();
        assert_eq!(
            outcomes,
            vec!["continue", "continue", "continue", "complete"]
        );
    }
    eprintln!(
        "crash test: {kills} SIGKILLs, {WORKFLOWS} workflows, {} effects applied once",
        applied.len()
    );
}
