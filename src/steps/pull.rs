//! The pull side of dispatch, in memory (SPEC §4 pull mode, §5): the registered pull agents
//! (their token hashes, what they offer, their lease), the tasks open to them (`undecided` and
//! `http_pull`, in queue order: priority, then age) and the tasks each agent holds.
//!
//! The durable truth lives in the workflows: each agent's `pull-agent` instance, each task's
//! `agent-task` instance. A claim is decided by the task's own step (an engine update), so this
//! board is only an index: a stale entry costs a refused claim, never a double one. It is
//! rebuilt from the stored states before the API opens ([`super::recover`]).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::workflow::{InstanceId, Timestamp};

use super::lines::{Lines, QueueKey, capability_set};
use super::task::Priority;

/// Prefix of every pull-agent token (tells it apart from other secrets in logs and configs).
pub const TOKEN_PREFIX: &str = "fleet_agent_";

/// SHA-256 of a token: the only form in which a token is stored. Tokens carry 256 random bits,
/// so a fast hash is enough (no password stretching needed).
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token and its hash.
pub fn new_token() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex(&bytes));
    let hash = token_hash(&token);
    (token, hash)
}

/// Whether an agent is reachable, as its lease says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Online,
    /// Its lease ran out: it missed `heartbeat_misses` heartbeats.
    Offline,
    Deregistered,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Online => "online",
            Liveness::Offline => "offline",
            Liveness::Deregistered => "deregistered",
        }
    }
}

/// What the board knows of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEntry {
    pub id: InstanceId,
    pub name: String,
    pub kinds: Vec<String>,
    pub capabilities: Vec<String>,
    pub max_concurrent: u32,
    pub token_hash: [u8; 32],
    pub lease_until: Timestamp,
    pub deregistered: bool,
    pub registered_at: Timestamp,
    pub last_heartbeat: Timestamp,
}

impl AgentEntry {
    pub fn liveness(&self, now: Timestamp) -> Liveness {
        if self.deregistered {
            Liveness::Deregistered
        } else if now < self.lease_until {
            Liveness::Online
        } else {
            Liveness::Offline
        }
    }

    /// Whether this agent could do a task of `kind` needing `capabilities`.
    pub fn offers(&self, kind: &str, capabilities: &[String]) -> bool {
        self.kinds.iter().any(|k| k == kind)
            && capabilities.iter().all(|c| self.capabilities.contains(c))
    }
}

/// A task open to pull agents.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub task_id: InstanceId,
    pub priority: Priority,
    pub created: Timestamp,
    pub kind: String,
    pub capabilities: Vec<String>,
    /// Assigned by a coordinator to this agent only.
    pub only_agent: Option<InstanceId>,
}

fn key(o: &Offer) -> QueueKey {
    (Reverse(o.priority), o.created, o.task_id)
}

#[derive(Debug, Default)]
struct Inner {
    agents: HashMap<InstanceId, AgentEntry>,
    by_name: HashMap<String, InstanceId>,
    by_hash: HashMap<[u8; 32], InstanceId>,
    /// The open tasks, one line per [`Line`] (what an agent must offer to take them), each in
    /// queue order: a dequeue looks at the head of each line its agent may take, whatever
    /// the number of tasks no agent can take.
    open: Lines<Line, Offer>,
    /// Tasks a dequeue is claiming right now: other dequeues pass them by.
    reserved: HashSet<InstanceId>,
    /// Tasks each agent holds.
    held: HashMap<InstanceId, HashSet<InstanceId>>,
    /// Recent dequeues that claimed a task: (agent, request key) → (task, epoch), so that a
    /// dequeue sent again with the same key gets the same task back.
    grants: HashMap<(InstanceId, String), (InstanceId, u64)>,
}

/// What an agent must offer to take a task: the open tasks are queued by it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Line {
    kind: String,
    capabilities: Vec<String>,
    only_agent: Option<InstanceId>,
}

impl Line {
    fn of(o: &Offer) -> Line {
        Line {
            kind: o.kind.clone(),
            capabilities: capability_set(&o.capabilities),
            only_agent: o.only_agent,
        }
    }
}

/// Dequeue answers remembered for resends; the oldest are forgotten beyond this.
const GRANTS_KEPT: usize = 65_536;

/// The pull agents and the tasks open to them. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Board {
    inner: Mutex<Inner>,
    /// How long a heartbeat keeps an agent online (`heartbeat_interval × heartbeat_misses`).
    lease: Duration,
}

impl Board {
    pub fn new(lease: Duration) -> Self {
        Board {
            inner: Mutex::new(Inner::default()),
            lease,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain maps that no code path leaves half-updated: a panic elsewhere does not make
        // them wrong.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long one heartbeat keeps an agent online.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Adds or replaces an agent (from its workflow state).
    pub fn upsert_agent(&self, entry: AgentEntry) {
        let mut b = self.lock();
        if let Some(old) = b.agents.get(&entry.id).cloned() {
            b.by_hash.remove(&old.token_hash);
            b.by_name.remove(&old.name);
        }
        b.by_hash.insert(entry.token_hash, entry.id);
        b.by_name.insert(entry.name.clone(), entry.id);
        b.agents.insert(entry.id, entry);
    }

    /// The agent whose token this is, compared in constant time with the stored hash.
    pub fn authenticate(&self, token: &str) -> Option<AgentEntry> {
        let hash = token_hash(token);
        let b = self.lock();
        let id = b.by_hash.get(&hash)?;
        let agent = b.agents.get(id)?;
        bool::from(agent.token_hash.ct_eq(&hash)).then(|| agent.clone())
    }

    pub fn agent(&self, id: InstanceId) -> Option<AgentEntry> {
        self.lock().agents.get(&id).cloned()
    }

    pub fn agent_named(&self, name: &str) -> Option<AgentEntry> {
        let b = self.lock();
        b.by_name.get(name).and_then(|id| b.agents.get(id)).cloned()
    }

    /// Every agent, in id order.
    pub fn agents(&self) -> Vec<AgentEntry> {
        let mut all: Vec<_> = self.lock().agents.values().cloned().collect();
        all.sort_by_key(|a| a.id);
        all
    }

    /// Extends an agent's lease from `now` (a heartbeat); returns the new lease end.
    pub fn heartbeat(&self, id: InstanceId, now: Timestamp) -> Option<Timestamp> {
        let mut b = self.lock();
        let a = b.agents.get_mut(&id)?;
        a.last_heartbeat = a.last_heartbeat.max(now);
        a.lease_until = a.lease_until.max(now.after(self.lease));
        Some(a.lease_until)
    }

    /// Whether some online agent could take a task of `kind` needing `capabilities`.
    pub fn anyone_offers(&self, kind: &str, capabilities: &[String], now: Timestamp) -> bool {
        self.lock()
            .agents
            .values()
            .any(|a| a.liveness(now) == Liveness::Online && a.offers(kind, capabilities))
    }

    /// Opens a task to pull agents (again: the entry is replaced).
    pub fn offer(&self, offer: Offer) {
        let (id, line, k) = (offer.task_id, Line::of(&offer), key(&offer));
        self.lock().open.insert(id, line, k, offer);
    }

    /// Takes a task off the pull queue (claimed, routed to a host, cancelled, ended).
    pub fn withdraw(&self, task: InstanceId) {
        self.lock().open.remove(task);
    }

    /// Reserves the first task in queue order that `agent` may claim and no other dequeue is
    /// claiming; [`Board::unreserve`] when the claim is decided.
    pub fn reserve_next(&self, agent: &AgentEntry) -> Option<InstanceId> {
        let mut b = self.lock();
        let found = b
            .open
            .lines()
            .filter(|(line, _)| {
                line.only_agent.is_none_or(|a| a == agent.id)
                    && agent.offers(&line.kind, &line.capabilities)
            })
            // The first of each line that no other dequeue is claiming (few are).
            .filter_map(|(_, offers)| {
                offers
                    .iter()
                    .find(|(_, o)| !b.reserved.contains(&o.task_id))
            })
            .min_by_key(|(k, _)| **k)
            .map(|(_, o)| o.task_id)?;
        b.reserved.insert(found);
        Some(found)
    }

    pub fn unreserve(&self, task: InstanceId) {
        self.lock().reserved.remove(&task);
    }

    /// Records that `agent` holds `task` (its claim was granted).
    pub fn hold(&self, agent: InstanceId, task: InstanceId) {
        let mut b = self.lock();
        b.open.remove(task);
        b.held.entry(agent).or_default().insert(task);
    }

    /// Records that `agent` no longer holds `task`.
    pub fn release(&self, agent: InstanceId, task: InstanceId) {
        let mut b = self.lock();
        if let Some(set) = b.held.get_mut(&agent) {
            set.remove(&task);
        }
    }

    /// The tasks `agent` holds, in id order.
    pub fn held(&self, agent: InstanceId) -> Vec<InstanceId> {
        let b = self.lock();
        let mut tasks: Vec<_> = b
            .held
            .get(&agent)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        tasks.sort_unstable();
        tasks
    }

    /// Remembers that the dequeue `key` of `agent` claimed `task` at `epoch`.
    pub fn remember_grant(&self, agent: InstanceId, key: &str, task: InstanceId, epoch: u64) {
        let mut b = self.lock();
        if b.grants.len() >= GRANTS_KEPT {
            b.grants.clear();
        }
        b.grants.insert((agent, key.to_string()), (task, epoch));
    }

    /// The task (and epoch) the dequeue `key` of `agent` claimed, if remembered.
    pub fn grant(&self, agent: InstanceId, key: &str) -> Option<(InstanceId, u64)> {
        self.lock().grants.get(&(agent, key.to_string())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: u64, kinds: &[&str], caps: &[&str]) -> AgentEntry {
        let (_, hash) = new_token();
        AgentEntry {
            id,
            name: format!("agent-{id}"),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            max_concurrent: 1,
            token_hash: hash,
            lease_until: Timestamp(u64::MAX),
            deregistered: false,
            registered_at: Timestamp(0),
            last_heartbeat: Timestamp(0),
        }
    }

    fn offer(task: u64, priority: Priority, created: u64, caps: &[&str]) -> Offer {
        Offer {
            task_id: task,
            priority,
            created: Timestamp(created),
            kind: "claude".into(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            only_agent: None,
        }
    }

    #[test]
    fn a_token_authenticates_its_agent_and_no_other_string_does() {
        let board = Board::new(Duration::from_secs(90));
        let (token, hash) = new_token();
        let mut a = agent(1, &["claude"], &[]);
        a.token_hash = hash;
        board.upsert_agent(a);
        assert_eq!(board.authenticate(&token).map(|a| a.id), Some(1));
        assert!(board.authenticate(&format!("{token}x")).is_none());
        assert!(board.authenticate("").is_none());
        assert!(token.len() >= TOKEN_PREFIX.len() + 32, "at least 128 bits");
    }

    #[test]
    fn dequeue_order_is_priority_then_age() {
        let board = Board::new(Duration::from_secs(90));
        board.offer(offer(1, Priority::Normal, 10, &[]));
        board.offer(offer(2, Priority::High, 20, &[]));
        board.offer(offer(3, Priority::Normal, 5, &[]));
        let a = agent(9, &["claude"], &[]);
        let order: Vec<_> = std::iter::from_fn(|| board.reserve_next(&a)).collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn an_agent_gets_only_tasks_whose_kind_and_capabilities_it_offers() {
        let board = Board::new(Duration::from_secs(90));
        board.offer(offer(1, Priority::Normal, 1, &["gpu"]));
        board.offer(offer(2, Priority::Normal, 2, &[]));
        assert_eq!(board.reserve_next(&agent(9, &["codex"], &["gpu"])), None);
        assert_eq!(board.reserve_next(&agent(9, &["claude"], &[])), Some(2));
        assert_eq!(
            board.reserve_next(&agent(8, &["claude"], &["gpu"])),
            Some(1)
        );
    }

    #[test]
    fn dequeue_order_holds_across_kinds_and_assignments_and_passes_over_reserved_tasks() {
        let board = Board::new(Duration::from_secs(90));
        for id in 100..1100 {
            let mut o = offer(id, Priority::High, 0, &[]);
            o.kind = "codex".into();
            board.offer(o);
        }
        board.offer(offer(1, Priority::Normal, 10, &["gpu"]));
        board.offer(offer(2, Priority::Normal, 5, &[]));
        let mut mine = offer(3, Priority::Low, 1, &[]);
        mine.only_agent = Some(9);
        board.offer(mine);
        let mut theirs = offer(4, Priority::High, 1, &[]);
        theirs.only_agent = Some(8);
        board.offer(theirs);
        board.offer(offer(5, Priority::Normal, 20, &["gpu", "gpu"]));
        let a = agent(9, &["claude"], &["gpu"]);
        let order: Vec<_> = std::iter::from_fn(|| board.reserve_next(&a)).collect();
        assert_eq!(
            order,
            vec![2, 1, 5, 3],
            "priority then age, whatever the line"
        );
        board.unreserve(1);
        assert_eq!(
            board.reserve_next(&a),
            Some(1),
            "free again once unreserved"
        );
        board.withdraw(2);
        board.unreserve(2);
        assert_eq!(board.reserve_next(&a), None, "a withdrawn task is gone");
    }

    #[test]
    fn a_task_assigned_to_one_agent_is_not_offered_to_others() {
        let board = Board::new(Duration::from_secs(90));
        let mut o = offer(1, Priority::Normal, 1, &[]);
        o.only_agent = Some(7);
        board.offer(o);
        assert_eq!(board.reserve_next(&agent(8, &["claude"], &[])), None);
        assert_eq!(board.reserve_next(&agent(7, &["claude"], &[])), Some(1));
    }

    #[test]
    fn a_lease_runs_out_unless_heartbeats_extend_it() {
        let board = Board::new(Duration::from_secs(90));
        let mut a = agent(1, &["claude"], &[]);
        a.lease_until = Timestamp(1_000);
        board.upsert_agent(a);
        let at = |t| board.agent(1).unwrap().liveness(Timestamp(t));
        assert_eq!(at(999), Liveness::Online);
        assert_eq!(at(1_000), Liveness::Offline);
        board.heartbeat(1, Timestamp(5_000));
        assert_eq!(at(5_000 + 89_999), Liveness::Online);
    }
}
