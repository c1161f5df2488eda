//! The benchmark workflow: five steps and one signal wait.
//!
//! The state is the number of steps done. Steps 1 and 2 go on at once; step 3 takes the `Go`
//! signal from the inbox (parking in `Waiting` until it arrives, unless it is already there);
//! steps 4 and 5 go on, and step 5 completes the instance.

use agent_fleet::workflow::{Outcome, StepCtx, StepResult, Workflow};
use serde::{Deserialize, Serialize};

/// The signal step 3 waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Go;

/// Five steps with a signal wait at step 3.
#[derive(Debug, Clone, Copy, Default)]
pub struct FiveSteps;

/// Index of the step that waits for [`Go`]: an instance parked for the signal has this state.
pub const WAIT_STEP: u8 = 2;

impl Workflow for FiveSteps {
    const NAME: &'static str = "bench.five_steps";
    const VERSION: u32 = 1;
    /// Steps done so far.
    type State = u8;
    type Signal = Go;

    async fn step(&self, ctx: &mut StepCtx<Go>, done: u8) -> StepResult<u8> {
        Ok(match done {
            0 | 1 | 3 => Outcome::next(done + 1),
            WAIT_STEP => match ctx.take(|_| true) {
                Some(Go) => Outcome::next(done + 1),
                None => Outcome::wait(done),
            },
            _ => Outcome::complete(done + 1),
        })
    }
}

/// The signal's idempotency key (one `Go` per instance).
pub const GO_KEY: &str = "go";
