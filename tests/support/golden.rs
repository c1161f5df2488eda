//! The workflow of the golden store fixture (`tests/fixtures/golden-v1.redb`), shared by its
//! generator (`examples/make_golden.rs`) and its test (`tests/golden_store.rs`). Never change
//! its types: the fixture was written with them.

#![allow(dead_code)] // each includer uses a part of it
use agent_fleet::workflow::{
    Delivery, Effect, EffectError, EffectHandler, Intent, Outcome, StepCtx, StepError, StepResult,
    Timestamp, Workflow,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum GoldenSignal {
    Go(String),
    Other(u32),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GoldenState {
    pub name: String,
    pub phase: u8,
    pub hang: bool,
    pub deadline: Option<Timestamp>,
    pub log: Vec<String>,
}

/// Phase 0 records an intent and queues an effect; phase 1 waits for `Go` (or its deadline).
pub struct GoldenFlow;

impl Workflow for GoldenFlow {
    const NAME: &'static str = "golden";
    const VERSION: u32 = 1;
    type State = GoldenState;
    type Signal = GoldenSignal;

    /// Added after the fixture was written (stores from before the phase index are indexed
    /// when they open): a method, not a stored type.
    fn phase(s: &GoldenState) -> Option<String> {
        Some(format!("phase-{}", s.phase))
    }

    async fn step(
        &self,
        ctx: &mut StepCtx<GoldenSignal>,
        mut s: GoldenState,
    ) -> StepResult<GoldenState> {
        if s.phase == 0 {
            match ctx.intent::<String, String>("touch", &s.name).await? {
                Intent::Fresh => {
                    if s.hang {
                        ctx.shutdown().cancelled().await;
                        return Err(StepError::msg("stopped before recording the result"));
                    }
                    ctx.resolve("touch", &"touched".to_string()).await?;
                    s.log.push("touched".into());
                }
                Intent::Unresolved(name) => s.log.push(format!("reconciled {name}")),
                Intent::Resolved(r) => s.log.push(r),
            }
            s.phase = 1;
            let fx = Effect::new("golden-fx", &s.name)?;
            return Ok(Outcome::next(s).effect(fx));
        }
        if let Some(GoldenSignal::Go(by)) = ctx.take(|g| matches!(g, GoldenSignal::Go(_))) {
            s.log.push(format!("go from {by}"));
            return Ok(Outcome::complete(s));
        }
        match s.deadline {
            Some(d) if ctx.now() >= d => {
                s.log.push("deadline".into());
                Ok(Outcome::complete(s))
            }
            Some(d) => Ok(Outcome::wait_until(s, d)),
            None => Ok(Outcome::wait(s)),
        }
    }
}

/// Accepts every effect and remembers the names it saw.
#[derive(Default, Clone)]
pub struct GoldenSink(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl EffectHandler for GoldenSink {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), EffectError>> {
        Box::pin(async move {
            let name: String = d
                .decode()
                .map_err(|e| EffectError::Permanent(e.to_string()))?;
            self.0
                .lock()
                .map_err(|_| EffectError::Transient("poisoned".into()))?
                .push(name);
            Ok(())
        })
    }
}
