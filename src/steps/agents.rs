//! Pull agents' registry (SPEC §5): one durable `pull-agent` workflow per agent name. It
//! records registrations (what the agent offers, its token's hash), heartbeats (each extends
//! the agent's lease to `heartbeat_interval × heartbeat_misses`) and deregistration, and keeps
//! a durable timer on the lease: when it runs out, the agent is recorded offline. Tasks the
//! agent holds watch the same lease through the [`Board`](super::pull::Board) and become
//! `agent_lost` on their own timers, so neither a restart nor a missed signal loses them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::workflow::{
    Engine, EngineError, InstanceId, Outcome, StepCtx, StepResult, Timestamp, Update, Workflow,
};

use super::pull::{AgentEntry, Liveness};
use super::runtime::Runtime;

/// What an agent says of itself when it registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub kinds: Vec<String>,
    pub capabilities: Vec<String>,
    pub max_concurrent: u32,
}

/// The stored state of one pull agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub name: String,
    pub profile: Profile,
    /// SHA-256 of the current token; the token itself is never stored.
    pub token_hash: [u8; 32],
    pub registered_at: Timestamp,
    pub last_heartbeat: Timestamp,
    pub lease_until: Timestamp,
    pub offline: bool,
    pub deregistered: bool,
}

impl AgentState {
    pub fn new(name: &str, profile: Profile, token_hash: [u8; 32], now: Timestamp) -> Self {
        AgentState {
            name: name.to_string(),
            profile,
            token_hash,
            registered_at: now,
            last_heartbeat: now,
            lease_until: now,
            offline: false,
            deregistered: false,
        }
    }

    /// The board's entry for this agent (instance `id`).
    pub fn entry(&self, id: InstanceId) -> AgentEntry {
        AgentEntry {
            id,
            name: self.name.clone(),
            kinds: self.profile.kinds.clone(),
            capabilities: self.profile.capabilities.clone(),
            max_concurrent: self.profile.max_concurrent,
            token_hash: self.token_hash,
            lease_until: self.lease_until,
            deregistered: self.deregistered,
            registered_at: self.registered_at,
            last_heartbeat: self.last_heartbeat,
        }
    }
}

/// A message to an agent's workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentSignal {
    /// Registered again: new profile and token (the old token stops working).
    Register {
        profile: Profile,
        token_hash: [u8; 32],
    },
    Heartbeat {
        at: Timestamp,
    },
    Deregister,
}

/// The `pull-agent` workflow definition.
pub struct PullAgent {
    rt: Arc<Runtime>,
}

impl PullAgent {
    pub fn new(rt: Arc<Runtime>) -> Self {
        PullAgent { rt }
    }
}

impl Workflow for PullAgent {
    const NAME: &'static str = "pull-agent";
    const VERSION: u32 = 1;
    type State = AgentState;
    type Signal = AgentSignal;

    async fn step(
        &self,
        ctx: &mut StepCtx<AgentSignal>,
        mut s: AgentState,
    ) -> StepResult<AgentState> {
        // Leases are rebuilt (with their restart grace) by recovery: nothing is decided before.
        self.rt.fleet().wait_ready().await;
        let id = ctx.instance();
        let now = Timestamp::now();
        let board = self.rt.board();
        let lease = board.lease();
        let mut notes = Vec::new();
        let was_online = !s.offline && !s.deregistered;
        while let Some(signal) = ctx.take_inbound(|_| true) {
            match signal.signal {
                AgentSignal::Register {
                    profile,
                    token_hash,
                } => {
                    s.profile = profile;
                    s.token_hash = token_hash;
                    s.deregistered = false;
                    s.last_heartbeat = now;
                    s.lease_until = now.after(lease);
                    notes.push("registered again: new token".to_string());
                    ctx.reply(signal.seq, &true)?;
                }
                AgentSignal::Heartbeat { at } => {
                    s.last_heartbeat = s.last_heartbeat.max(at);
                    s.lease_until = s.lease_until.max(at.after(lease));
                }
                AgentSignal::Deregister => {
                    s.deregistered = true;
                    notes.push("deregistered".to_string());
                    ctx.reply(signal.seq, &true)?;
                }
            }
        }
        // The board may know a later lease: heartbeats it took before their signals were read,
        // or the grace every agent gets after a daemon restart.
        if let Some(known) = board.agent(id) {
            s.lease_until = s.lease_until.max(known.lease_until);
        }
        let entry = s.entry(id);
        let online = entry.liveness(now) == Liveness::Online;
        board.upsert_agent(entry);
        if online && s.offline {
            notes.push("back online".to_string());
        }
        if !online && was_online && !s.deregistered {
            notes.push(format!(
                "offline: no heartbeat since {} (lease over)",
                humantime::format_rfc3339_seconds(s.last_heartbeat.system_time())
            ));
        }
        s.offline = !online;
        let outcome = if online {
            Outcome::wait_until(s.clone(), s.lease_until)
        } else {
            Outcome::wait(s)
        };
        Ok(if notes.is_empty() {
            outcome
        } else {
            outcome.note(notes.join("; "))
        })
    }
}

/// Registers `name` (a first registration starts its workflow; a later one sends it the new
/// profile and token) and returns the agent's id once the board knows the new token.
pub async fn register(
    engine: &Engine,
    rt: &Runtime,
    name: &str,
    profile: Profile,
    token_hash: [u8; 32],
) -> Result<InstanceId, EngineError> {
    let now = Timestamp::now();
    let mut state = AgentState::new(name, profile.clone(), token_hash, now);
    state.lease_until = now.after(rt.board().lease());
    let key = format!("agent/{name}");
    let ack = engine.start_ack::<PullAgent>(&state, Some(&key)).await?;
    if !ack.duplicate {
        rt.board().upsert_agent(state.entry(ack.id));
        return Ok(ack.id);
    }
    let signal = AgentSignal::Register {
        profile,
        token_hash,
    };
    let key = format!("register-{}", super::pull::hex(&token_hash[..16]));
    match engine
        .update::<PullAgent, bool>(ack.id, &signal, &key, std::time::Duration::from_secs(30))
        .await?
    {
        Update::Replied(_) => Ok(ack.id),
        other => Err(EngineError::Internal(format!(
            "agent {name}: registration not taken in time ({other:?}); register again"
        ))),
    }
}
