//! The engine's secondary indexes (issue 15 §2): instances by workflow and phase, kept by the
//! writer in each change's transaction, and built once for a store written before them.

use agent_fleet::workflow::{Engine, Outcome, Status, StepCtx, StepResult, Workflow};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

#[path = "support/engine.rs"]
mod support;
use support::{builder, wait_status};

#[path = "support/golden.rs"]
mod golden;

/// Waits in phase `open` until a signal moves it to the phase it names; `close` completes.
struct Door;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoorState {
    phase: String,
}

impl Workflow for Door {
    const NAME: &'static str = "door";
    const VERSION: u32 = 1;
    type State = DoorState;
    type Signal = String;

    fn phase(state: &DoorState) -> Option<String> {
        Some(state.phase.clone())
    }

    /// Every phase it has been in.
    fn keys(state: &DoorState) -> Vec<String> {
        vec![format!("was/{}", state.phase)]
    }

    async fn step(&self, ctx: &mut StepCtx<String>, mut s: DoorState) -> StepResult<DoorState> {
        if let Some(next) = ctx.take(|_| true) {
            s.phase = next;
        }
        Ok(if s.phase == "closed" {
            Outcome::complete(s)
        } else {
            Outcome::wait(s)
        })
    }
}

async fn door(engine: &Engine) -> u64 {
    let state = DoorState {
        phase: "open".into(),
    };
    engine.start::<Door>(&state, None).await.unwrap()
}

fn ids(engine: &Engine, phase: &str, after: u64, limit: usize) -> Vec<u64> {
    engine
        .list_phase("door", phase, after, limit)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[tokio::test]
async fn instances_are_listed_by_phase_in_id_order_and_move_when_their_phase_changes() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Door).open().await.unwrap();
    let mut all = Vec::new();
    for _ in 0..6 {
        all.push(door(&engine).await);
    }
    for id in &all {
        wait_status(&engine, *id, Status::Waiting).await;
    }
    for id in [all[1], all[4]] {
        engine
            .signal::<Door>(id, &"ajar".to_string(), "a")
            .await
            .unwrap();
    }
    engine
        .signal::<Door>(all[5], &"closed".to_string(), "c")
        .await
        .unwrap();
    wait_status(&engine, all[5], Status::Completed).await;
    for id in [all[1], all[4]] {
        let deadline = tokio::time::Instant::now() + support::T;
        while !ids(&engine, "ajar", 0, 10).contains(&id) {
            assert!(tokio::time::Instant::now() < deadline, "{id} never ajar");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(ids(&engine, "open", 0, 10), vec![all[0], all[2], all[3]]);
    assert_eq!(ids(&engine, "ajar", 0, 10), vec![all[1], all[4]]);
    assert_eq!(ids(&engine, "closed", 0, 10), vec![all[5]]);
    // Pages: after the last id of the previous one.
    assert_eq!(ids(&engine, "open", 0, 2), vec![all[0], all[2]]);
    assert_eq!(ids(&engine, "open", all[2], 2), vec![all[3]]);
    assert_eq!(ids(&engine, "shut", 0, 10), Vec::<u64>::new());
    let page: Vec<u64> = engine
        .list_page(Some("door"), all[3], 10)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(page, all[4..].to_vec());
}

#[tokio::test]
async fn a_store_from_before_the_indexes_is_indexed_when_it_opens() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("fleet.redb");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden-v2.redb");
    std::fs::copy(fixture, &path).unwrap();
    let engine = Engine::builder(&path)
        .register(golden::GoldenFlow)
        .handler("golden-fx", golden::GoldenSink::default())
        .open()
        .await
        .unwrap();
    let mut listed: Vec<u64> = ["phase-0", "phase-1", "phase-2"]
        .iter()
        .flat_map(|p| engine.list_phase("golden", p, 0, 10).unwrap())
        .map(|i| i.id)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![1, 2, 3, 4, 5],
        "every golden instance is indexed by phase"
    );
}

#[tokio::test]
async fn instances_are_found_by_the_keys_their_states_named_even_after_they_ended() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Door).open().await.unwrap();
    let a = door(&engine).await;
    let b = door(&engine).await;
    let state = DoorState {
        phase: "open".into(),
    };
    let c = engine.start::<Door>(&state, Some("front")).await.unwrap();
    engine
        .signal::<Door>(a, &"closed".to_string(), "c")
        .await
        .unwrap();
    wait_status(&engine, a, Status::Completed).await;
    wait_status(&engine, b, Status::Waiting).await;
    assert_eq!(engine.keyed("door", "was/open").unwrap(), vec![a, b, c]);
    assert_eq!(engine.keyed("door", "was/closed").unwrap(), vec![a]);
    assert_eq!(engine.keyed("door", "was/ajar").unwrap(), Vec::<u64>::new());
    assert_eq!(
        engine.keyed("other", "was/open").unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(engine.started("door", "front").unwrap(), Some(c));
    assert_eq!(engine.started("door", "back").unwrap(), None);
}

#[tokio::test]
async fn ended_instances_are_walked_in_end_order_from_a_cursor() {
    let dir = TempDir::new().unwrap();
    let engine = builder(&dir).register(Door).open().await.unwrap();
    let mut ended = Vec::new();
    for _ in 0..3 {
        let id = door(&engine).await;
        engine
            .signal::<Door>(id, &"closed".to_string(), "c")
            .await
            .unwrap();
        wait_status(&engine, id, Status::Completed).await;
        ended.push(id);
    }
    let open = door(&engine).await;
    let far = agent_fleet::workflow::Timestamp::now().after(std::time::Duration::from_secs(60));
    let start = (agent_fleet::workflow::Timestamp(0), 0);
    let all = engine.ended_between(start, far, 10).unwrap();
    assert_eq!(all.iter().map(|e| e.1).collect::<Vec<_>>(), ended);
    assert!(!all.iter().any(|e| e.1 == open));
    let next = engine.ended_between(all[0], far, 10).unwrap();
    assert_eq!(next.iter().map(|e| e.1).collect::<Vec<_>>(), ended[1..]);
    let none = engine.ended_between(start, all[0].0, 10).unwrap();
    assert!(none.is_empty(), "only those that ended before `before`");
}
