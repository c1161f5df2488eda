//! Schemathesis (property-based API testing, from PyPI) against a real daemon: it reads the
//! daemon's `GET /openapi.json`, generates requests for every operation (valid ones and
//! invalid ones), sends them with the admin token, and checks every answer: no server error
//! (5xx) and no answer that the document does not describe (status, body schema).
//!
//! `scripts/test` installs Schemathesis into a virtualenv under the target directory and names
//! its executable in `AGENT_FLEET_SCHEMATHESIS`. Without it the test fails under `CI=true` and
//! is skipped, loudly, elsewhere.

#[path = "support/daemon.rs"]
mod daemon;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use daemon::{Fleet, Setup, TOKEN};
use serde_json::Value;

/// A hard bound on the whole Schemathesis run (it normally takes far less).
const RUN_LIMIT: Duration = Duration::from_secs(100);

/// The Schemathesis executable, or `None` (outside CI only) when it is not installed.
fn schemathesis() -> Option<PathBuf> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match std::env::var_os("AGENT_FLEET_SCHEMATHESIS") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "AGENT_FLEET_SCHEMATHESIS={} does not exist: run scripts/test, which installs it",
                path.display()
            );
            Some(path)
        }
        None if in_ci => panic!(
            "CI=true but AGENT_FLEET_SCHEMATHESIS is not set: scripts/test installs Schemathesis \
             and sets it; this test must not be skipped in CI"
        ),
        None => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of a
            // passing test, and this must be seen.
            let _ = std::io::stderr().write_all(
                b"\n==================================================================\n\
                  SKIPPED schemathesis test: AGENT_FLEET_SCHEMATHESIS is not set.\n\
                  Run scripts/test (it installs Schemathesis) to run it.\n\
                  ==================================================================\n",
            );
            None
        }
    }
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let Some(bin) = schemathesis() else {
        return;
    };
    let fleet = Fleet::start(Setup::default()).await;
    // Tasks 1 and 2 exist (the documented example id is "1"): one done, one still running.
    let done = fleet.submit("Done", "").await;
    fleet.submit("Running", "demo-agent: sleep 60\n").await;
    fleet
        .wait_status(&done, "completed", Duration::from_secs(30))
        .await;

    let reports = tempfile::tempdir().unwrap();
    let report = reports.path().join("report.json");
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&bin);
    command
        .arg("run")
        .arg(format!("{}/openapi.json", fleet.url))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        // The change feed is an endless event stream (its answer never completes, so every
        // request would time out); tests/events_sse.rs covers its answers and refusals.
        .args(["--exclude-path", "/api/v1/events"])
        // Every phase: examples, coverage (edge values, wrong types), fuzzing, and stateful
        // sequences along the links Schemathesis infers (a submitted task's id reused).
        .args(["--max-examples", "30"])
        .args(["--max-failures", "20"])
        .args(["--seed", "20261121"])
        // One worker: Hypothesis' lambda descriptions call `ast.parse`, which CPython 3.11 can
        // fail with "AST constructor recursion depth mismatch" when threads do it at once.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .args(["--report", "json"])
        .arg("--report-json-path")
        .arg(&report)
        .arg("--no-color")
        .current_dir(reports.path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran over {RUN_LIMIT:?}"))
        .expect("run schemathesis");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("schemathesis took {took:.1?}\n{stdout}{stderr}");

    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report at {}: {e}\n{stdout}{stderr}", report.display()));
    let report: Value = serde_json::from_str(&text).unwrap();
    let context = format!("{stdout}{stderr}\ndaemon log:\n{}", fleet.log());
    let failures = report["failures"].as_array().expect("failures");
    // Only two checks run, so a failure is either a server error or an answer the document does
    // not describe (body schema, malformed JSON, undocumented content type…).
    let count = |server: bool| -> u64 {
        failures
            .iter()
            .filter(|f| (f["type"] == "ServerError") == server)
            .map(|f| f["count"].as_u64().unwrap_or(1))
            .sum()
    };
    assert_eq!(count(true), 0, "server errors: {failures:#?}\n{context}");
    assert_eq!(
        count(false),
        0,
        "schema violations: {failures:#?}\n{context}"
    );
    assert_eq!(report["errors"], serde_json::json!([]), "{context}");
    assert_eq!(report["complete"], true, "{context}");
    // Every operation but the excluded stream (Schemathesis leaves out the document's own
    // route).
    let operations = &report["operations"];
    assert_eq!(operations["tested"], operations["selected"], "{context}");
    assert_eq!(
        operations["selected"].as_u64().unwrap() + 1,
        operations["total"].as_u64().unwrap(),
        "{operations}\n{context}"
    );
    assert!(operations["total"].as_u64().unwrap() >= 10, "{context}");
    assert_eq!(operations["errored"], 0, "{context}");
    assert!(
        report["test_cases"]["generated"].as_u64().unwrap() > 100,
        "{context}"
    );
    assert!(output.status.success(), "exit {}: {context}", output.status);
    assert!(took < RUN_LIMIT);
    let _ = writeln!(
        std::io::stderr(),
        "schemathesis: {} test cases over {} operations, no failure, in {took:.1?}",
        report["test_cases"]["generated"],
        operations["tested"]
    );
}
