//! Parking (issue 14, point 9): instances that wait for something outside the store (here a
//! host slot of the real `Fleet`) park without holding one of the engine's step permits, and
//! are woken through `Engine::waker` when it is there for them; a wake-up that arrives between a
//! step's look and its park is not lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_fleet::config::Config;
use agent_fleet::steps::dispatch::{Fleet, Health, Ticket};
use agent_fleet::steps::task::Priority;
use agent_fleet::workflow::{
    EngineConfig, Outcome, Status, StepCtx, StepResult, Timestamp, Workflow,
};
use tempfile::TempDir;
use tokio::sync::Notify;

#[path = "support/engine.rs"]
mod support;
use support::{T, builder, fast_config};

/// A task that needs one of the fleet's slots: it asks, parks when none is there for it, and
/// when it gets one does its (instant) work, frees the slot and completes.
struct Slotted {
    fleet: Fleet,
    /// Tasks holding a slot right now, and the most ever seen at once.
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    done: Arc<AtomicU64>,
}

impl Workflow for Slotted {
    const NAME: &'static str = "slotted";
    const VERSION: u32 = 1;
    /// How many times the task asked.
    type State = u32;
    type Signal = ();
    async fn step(&self, ctx: &mut StepCtx<()>, asks: u32) -> StepResult<u32> {
        let id = ctx.instance();
        let ticket = Ticket {
            task_id: id,
            priority: Priority::Normal,
            created: Timestamp(id),
            agent: "a".into(),
            capabilities: vec![],
            host: None,
        };
        let Some(_host) = self.fleet.try_acquire(&ticket) else {
            return Ok(Outcome::wait(asks + 1));
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.fleet.release(id);
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(Outcome::complete(asks + 1))
    }
}

/// A timer (e.g. an agent's lease): waits until its deadline, then records how late it ran and
/// how many tasks still waited for a slot then.
struct Timer {
    late_ms: Arc<AtomicU64>,
    fleet: Fleet,
    queued_then: Arc<AtomicUsize>,
}

impl Workflow for Timer {
    const NAME: &'static str = "timer";
    const VERSION: u32 = 1;
    /// The deadline (Unix ms).
    type State = u64;
    type Signal = ();
    async fn step(&self, ctx: &mut StepCtx<()>, at: u64) -> StepResult<u64> {
        let now = ctx.now();
        if now.0 < at {
            return Ok(Outcome::wait_until(at, Timestamp(at)));
        }
        self.late_ms.store(now.0 - at, Ordering::SeqCst);
        self.queued_then
            .store(self.fleet.queued(), Ordering::SeqCst);
        Ok(Outcome::complete(at))
    }
}

/// One host with `max_concurrent` slots, online, routing open.
fn fleet(max_concurrent: u32) -> Fleet {
    let config = Config::from_toml_str(&format!(
        "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n\
         [[hosts]]\nhost_id = \"h\"\nhostname = \"localhost\"\nagents = [\"a\"]\n\
         max_concurrent = {max_concurrent}\nwork_root = \"/tmp/w\"\n"
    ))
    .unwrap();
    let fleet = Fleet::new(&config);
    fleet.set_health("h", Health::Online, HashSet::new());
    fleet
}

/// 5,000 tasks queue for 2 slots with only 64 step permits: every one completes (parked tasks
/// hold no permit, so the ones holding a slot always get to run), never more than 2 at once,
/// and a timer set while the queue is long fires on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_tasks_waiting_for_two_slots_all_complete_and_a_timer_fires_on_time() {
    const TASKS: u64 = 5_000;
    let dir = TempDir::new().unwrap();
    let fleet = fleet(2);
    let slotted = Slotted {
        fleet: fleet.clone(),
        running: Arc::default(),
        peak: Arc::default(),
        done: Arc::default(),
    };
    let (peak, done) = (slotted.peak.clone(), slotted.done.clone());
    let late_ms = Arc::new(AtomicU64::new(u64::MAX));
    let queued_then = Arc::new(AtomicUsize::new(0));
    let engine = builder(&dir)
        .config(EngineConfig {
            max_active_steps: 64,
            ..fast_config()
        })
        .register(slotted)
        .register(Timer {
            late_ms: late_ms.clone(),
            fleet: fleet.clone(),
            queued_then: queued_then.clone(),
        })
        .open()
        .await
        .unwrap();
    let waker = engine.waker();
    fleet.set_waker(move |id| waker.wake(id));
    fleet.mark_ready();

    let started = Instant::now();
    let mut timer = None;
    for chunk in 0..TASKS / 500 {
        let starts = (0..500).map(|_| engine.start::<Slotted>(&0, None));
        for r in futures::future::join_all(starts).await {
            r.unwrap();
        }
        // Set while thousands of tasks wait for a slot.
        if chunk == TASKS / 500 / 2 {
            let at = Timestamp::now().after(Duration::from_millis(500)).0;
            timer = Some(engine.start::<Timer>(&at, None).await.unwrap());
        }
    }
    let timer = timer.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.load(Ordering::SeqCst) < TASKS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let timer_status = engine.wait_terminal(timer, T).await.unwrap();
    let finished = done.load(Ordering::SeqCst);
    let mut not_completed = 0;
    for info in engine.list().unwrap() {
        if info.id != timer {
            not_completed += usize::from(info.status != Status::Completed);
        }
    }
    engine.shutdown().await.unwrap();
    eprintln!(
        "{TASKS} tasks through 2 slots in {elapsed:?}; timer {} ms late, {} queued then",
        late_ms.load(Ordering::SeqCst),
        queued_then.load(Ordering::SeqCst)
    );
    assert_eq!(
        (finished, not_completed),
        (TASKS, 0),
        "tasks left after {elapsed:?}"
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "more than 2 tasks held a slot"
    );
    assert_eq!(fleet.queued(), 0, "the queue is empty once all ran");
    assert_eq!(timer_status, Status::Completed);
    let late = late_ms.load(Ordering::SeqCst);
    assert!(late <= 2_000, "the timer fired {late} ms late");
    let queued = queued_then.load(Ordering::SeqCst);
    assert!(
        queued > 0,
        "the queue had drained when the timer fired: the test proves nothing"
    );
}

/// A wake-up committed while the step runs, after it looked (nothing for it yet) and before it
/// parks, is not lost: the park runs the step again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_between_a_steps_look_and_its_park_is_not_lost() {
    struct LooksThenParks {
        looked: Arc<Notify>,
        go: Arc<Notify>,
    }
    impl Workflow for LooksThenParks {
        const NAME: &'static str = "looks-then-parks";
        const VERSION: u32 = 1;
        /// Steps run so far.
        type State = u32;
        type Signal = ();
        async fn step(&self, _ctx: &mut StepCtx<()>, runs: u32) -> StepResult<u32> {
            if runs == 0 {
                // Looked: nothing there yet. The wake-up comes now, before the park commits.
                self.looked.notify_one();
                self.go.notified().await;
                return Ok(Outcome::wait(1));
            }
            Ok(Outcome::complete(runs + 1))
        }
    }
    let dir = TempDir::new().unwrap();
    let (looked, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let engine = builder(&dir)
        .register(LooksThenParks {
            looked: looked.clone(),
            go: go.clone(),
        })
        .open()
        .await
        .unwrap();
    let id = engine.start::<LooksThenParks>(&0, None).await.unwrap();
    tokio::time::timeout(T, looked.notified()).await.unwrap();
    engine.wake(id).await.unwrap();
    go.notify_one();
    let status = engine.wait_terminal(id, Duration::from_secs(3)).await;
    let info = engine.info(id).unwrap();
    engine.shutdown().await.unwrap();
    assert_eq!(
        info.status,
        Status::Completed,
        "the wake-up was lost: {status:?}, step {}",
        info.step
    );
}
