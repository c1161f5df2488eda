//! Host selection (SPEC §4 Route / Select host): which host runs a task — one that offers the
//! agent kind and capabilities, is healthy (its last check passed and found the agent's CLI), is
//! below its `max_concurrent`, least loaded first — in priority order (ties oldest first).
//!
//! A task that gets no slot does not wait in memory: it stays in the queue and its step parks
//! (no engine step permit, no tokio task). Whenever slots or health change, the queue is walked
//! in order and each parked task that would now get a slot is woken once (the waker, set by
//! recovery, is the engine's [`crate::workflow::Engine::wake`]); its next step asks again with
//! [`Fleet::try_acquire`].
//!
//! Slots and the queue live in memory. After a restart they are rebuilt from the workflow states
//! before any task is routed ([`Fleet::hold`] for every task that holds a host, [`Fleet::queue`]
//! for every task that waits for one, then [`Fleet::mark_ready`], which wakes the first), so a
//! recovered daemon never over-commits a host and parked tasks are woken again.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::config::Config;
use crate::workflow::Timestamp;

use super::lines::{Lines, QueueKey, capability_set};
use super::task::Priority;

/// A task asking for a host.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub task_id: u64,
    pub priority: Priority,
    pub created: Timestamp,
    pub agent: String,
    pub capabilities: Vec<String>,
    /// Assigned by a coordinator to this host only.
    pub host: Option<String>,
}

fn queue_key(t: &Ticket) -> QueueKey {
    (std::cmp::Reverse(t.priority), t.created, t.task_id)
}

/// What the health checks say of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet: not chosen until a check passes.
    Unchecked,
    Online,
    Offline {
        reason: String,
    },
}

impl Health {
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Online => "online",
            Health::Offline { .. } => "offline",
        }
    }
}

/// A host's load and health, as routing sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoad {
    pub id: String,
    pub running: usize,
    pub max_concurrent: usize,
    pub health: Health,
    /// Agent kinds this host lists whose CLI the last check did not find.
    pub missing_agents: Vec<String>,
    /// Agent kinds paused here by a usage limit (pauses in force only).
    pub paused: BTreeMap<String, Pause>,
}

#[derive(Debug)]
struct Host {
    id: String,
    agents: Vec<String>,
    capabilities: Vec<String>,
    max_concurrent: usize,
    running: HashSet<u64>,
    health: Health,
    missing: HashSet<String>,
    /// Agent kinds paused here by a usage limit, until the reset (Unix ms).
    paused: BTreeMap<String, Pause>,
}

/// An agent kind paused on a host by a usage limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub until: Timestamp,
    pub reason: String,
}

impl Host {
    /// By configuration: whether this host could ever run the task.
    fn offers(&self, t: &Ticket) -> bool {
        t.host.as_ref().is_none_or(|h| *h == self.id)
            && self.agents.contains(&t.agent)
            && t.capabilities.iter().all(|c| self.capabilities.contains(c))
    }

    /// Now: whether the host is healthy and has the task's agent CLI.
    fn can_take(&self, t: &Ticket, now: Timestamp) -> bool {
        self.offers(t)
            && self.health == Health::Online
            && !self.missing.contains(&t.agent)
            && self.paused.get(&t.agent).is_none_or(|p| p.until <= now)
    }
}

/// A ticket in the queue; `woken` once its task was told a slot is there for it (reset when
/// the task asks again).
#[derive(Debug)]
struct Queued {
    ticket: Ticket,
    woken: bool,
}

/// What a ticket asks of a host (agent kind, host pin, capabilities): tickets of one class can
/// go to the same hosts. The queue keeps one ordered line per class, so that finding the next
/// tasks to serve costs the number of classes, not the length of the queue (thousands of tasks
/// may wait for an agent kind no host can run now).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Class {
    agent: String,
    host: Option<String>,
    capabilities: Vec<String>,
}

impl Class {
    fn of(t: &Ticket) -> Class {
        Class {
            agent: t.agent.clone(),
            host: t.host.clone(),
            capabilities: capability_set(&t.capabilities),
        }
    }
}

#[derive(Debug, Default)]
struct Slots {
    hosts: Vec<Host>,
    /// The waiting tickets, one line per class.
    waiting: Lines<Class, Queued>,
}

impl Slots {
    /// Puts `t` in the queue (replacing the task's earlier ticket), not woken.
    fn enqueue(&mut self, t: &Ticket) {
        let queued = Queued {
            ticket: t.clone(),
            woken: false,
        };
        self.waiting
            .insert(t.task_id, Class::of(t), queue_key(t), queued);
    }

    fn dequeue(&mut self, task_id: u64) -> bool {
        self.waiting.remove(task_id)
    }

    /// Walks the queue in order, reserving for each ticket the least loaded free host that
    /// can take it, until no host has a free slot or `stop_at` got one. Returns the
    /// (task, host index) reservations in queue order. A ticket no host can take now is
    /// passed over, and so is the rest of its class (reservations only fill hosts up): each
    /// reservation costs the number of classes, whatever the queue's length.
    fn plan(&self, now: Timestamp, stop_at: Option<u64>) -> Vec<(u64, usize)> {
        let mut reserved: Vec<usize> = self.hosts.iter().map(|h| h.running.len()).collect();
        let mut out = Vec::new();
        let mut heads: Vec<_> = self
            .waiting
            .lines()
            .map(|(_, line)| line.values().peekable())
            .collect();
        loop {
            let free = self
                .hosts
                .iter()
                .zip(&reserved)
                .any(|(h, r)| h.health == Health::Online && *r < h.max_concurrent);
            if !free {
                break;
            }
            // The first ticket in queue order that a host can take now, and that host.
            let mut next: Option<(&Queued, usize)> = None;
            heads.retain_mut(|line| {
                let Some(q) = line.peek() else {
                    return false;
                };
                // The class is the same all along the line: its head decides for it.
                let Some(host) = self.best_host(&q.ticket, now, &reserved) else {
                    return false;
                };
                if next.is_none_or(|(n, _)| queue_key(&q.ticket) < queue_key(&n.ticket)) {
                    next = Some((q, host));
                }
                true
            });
            let Some((q, host)) = next else {
                break;
            };
            let task_id = q.ticket.task_id;
            for line in &mut heads {
                if line.peek().is_some_and(|h| h.ticket.task_id == task_id) {
                    line.next();
                    break;
                }
            }
            reserved[host] += 1;
            out.push((task_id, host));
            if stop_at == Some(task_id) {
                break;
            }
        }
        out
    }

    /// The least loaded host (relative to capacity) that can take `t` now with a slot free
    /// after `reserved`.
    fn best_host(&self, t: &Ticket, now: Timestamp, reserved: &[usize]) -> Option<usize> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(i, h)| h.can_take(t, now) && reserved[*i] < h.max_concurrent)
            .min_by(|(i, a), (j, b)| {
                // Least loaded relative to capacity: a/ca < b/cb  <=>  a*cb < b*ca.
                (reserved[*i] * b.max_concurrent).cmp(&(reserved[*j] * a.max_concurrent))
            })
            .map(|(i, _)| i)
    }

    /// The parked tasks the queue's order now gives a slot and that were not told yet: marked
    /// woken, to be woken by the caller (outside the lock).
    fn take_wakes(&mut self, now: Timestamp) -> Vec<u64> {
        let mut out = Vec::new();
        for (task_id, _) in self.plan(now, None) {
            if let Some(q) = self.waiting.get_mut(task_id)
                && !q.woken
            {
                q.woken = true;
                out.push(task_id);
            }
        }
        out
    }
}

/// Wakes a parked task (its step runs again).
type WakeFn = Arc<dyn Fn(u64) + Send + Sync>;

/// The daemon's hosts and who runs where. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<Slots>,
    ready: watch::Sender<bool>,
    waker: Mutex<Option<WakeFn>>,
}

/// A task's place in the queue while its Route step runs: left when dropped, unless the step
/// parks waiting for a slot ([`QueuePlace::keep`]).
pub struct QueuePlace<'a> {
    fleet: &'a Fleet,
    task_id: u64,
    keep: bool,
}

impl QueuePlace<'_> {
    /// The step parks: the ticket stays in the queue, and the task is woken when a slot fits.
    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        if !self.keep {
            self.fleet.leave(self.task_id);
        }
    }
}

impl Fleet {
    /// The configured hosts, unchecked: none is chosen before its first health check passes.
    pub fn new(config: &Config) -> Self {
        let hosts = config
            .hosts
            .iter()
            .map(|h| Host {
                id: h.host_id.clone(),
                agents: h.agents.clone(),
                capabilities: h.capabilities.clone(),
                max_concurrent: h.max_concurrent as usize,
                running: HashSet::new(),
                health: Health::Unchecked,
                missing: HashSet::new(),
                paused: BTreeMap::new(),
            })
            .collect();
        Fleet {
            inner: Arc::new(Inner {
                slots: Mutex::new(Slots {
                    hosts,
                    ..Slots::default()
                }),
                ready: watch::channel(false).0,
                waker: Mutex::new(None),
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // The lock guards plain bookkeeping that no code path leaves half-done, so a panic
        // elsewhere while it was held does not make it wrong: keep using it.
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how parked tasks are woken (the engine's waker); until then nobody is woken.
    pub fn set_waker(&self, wake: impl Fn(u64) + Send + Sync + 'static) {
        *self.inner.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(wake));
    }

    /// Wakes the parked tasks that the queue's order now gives a slot (each once per park).
    fn wake_next(&self, mut slots: MutexGuard<'_, Slots>) {
        if !*self.inner.ready.borrow() {
            return;
        }
        let ids = slots.take_wakes(Timestamp::now());
        drop(slots);
        if ids.is_empty() {
            return;
        }
        let waker = self
            .inner
            .waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(wake) = waker {
            for id in ids {
                wake(id);
            }
        }
    }

    /// Whether some host could ever run this task (agent kind and capabilities).
    pub fn can_serve(&self, t: &Ticket) -> bool {
        self.slots().hosts.iter().any(|h| h.offers(t))
    }

    /// Records what a health check found: the host's health and the agent kinds whose CLI is
    /// missing there. Tasks waiting for a host are woken up.
    pub fn set_health(&self, host: &str, health: Health, missing: HashSet<String>) {
        let mut slots = self.slots();
        if let Some(h) = slots.hosts.iter_mut().find(|h| h.id == host) {
            h.health = health;
            h.missing = missing;
        }
        self.wake_next(slots);
    }

    /// Takes `host` out of selection until a health check passes again (a run there was lost).
    pub fn mark_offline(&self, host: &str, reason: &str) {
        if let Some(h) = self.slots().hosts.iter_mut().find(|h| h.id == host) {
            h.health = Health::Offline {
                reason: reason.to_string(),
            };
        }
    }

    /// The health of `host`, if it is configured.
    pub fn health(&self, host: &str) -> Option<Health> {
        let slots = self.slots();
        slots
            .hosts
            .iter()
            .find(|h| h.id == host)
            .map(|h| h.health.clone())
    }

    /// Every host's load and health, in configuration order.
    pub fn loads(&self) -> Vec<HostLoad> {
        let now = Timestamp::now();
        self.slots()
            .hosts
            .iter()
            .map(|h| {
                let mut missing: Vec<String> = h.missing.iter().cloned().collect();
                missing.sort();
                HostLoad {
                    id: h.id.clone(),
                    running: h.running.len(),
                    max_concurrent: h.max_concurrent,
                    health: h.health.clone(),
                    missing_agents: missing,
                    paused: h
                        .paused
                        .iter()
                        .filter(|(_, p)| p.until > now)
                        .map(|(k, p)| (k.clone(), p.clone()))
                        .collect(),
                }
            })
            .collect()
    }

    /// Pauses agent kind `agent` on `host` until `until` (a usage limit): no task of that kind
    /// is given the host before then. A later pause replaces an earlier one only if it ends
    /// later.
    pub fn pause(&self, host: &str, agent: &str, until: Timestamp, reason: &str) {
        let mut slots = self.slots();
        if let Some(h) = slots.hosts.iter_mut().find(|h| h.id == host) {
            let keep = h.paused.get(agent).is_some_and(|p| p.until >= until);
            if !keep {
                let reason = reason.to_string();
                h.paused.insert(agent.to_string(), Pause { until, reason });
            }
        }
        self.wake_next(slots);
    }

    /// The pauses in force on `host` (ended ones are dropped), by agent kind.
    pub fn pauses(&self, host: &str) -> BTreeMap<String, Pause> {
        let now = Timestamp::now();
        let mut slots = self.slots();
        let Some(h) = slots.hosts.iter_mut().find(|h| h.id == host) else {
            return BTreeMap::new();
        };
        h.paused.retain(|_, p| p.until > now);
        h.paused.clone()
    }

    /// Records that `task_id` holds a slot on `host` (recovery). Unknown hosts are ignored.
    pub fn hold(&self, host: &str, task_id: u64) {
        if let Some(h) = self.slots().hosts.iter_mut().find(|h| h.id == host) {
            h.running.insert(task_id);
        }
    }

    /// Frees whatever slot `task_id` holds and takes it out of the queue; the tasks that can
    /// now have a slot are woken.
    pub fn release(&self, task_id: u64) {
        let mut slots = self.slots();
        let mut changed = slots.dequeue(task_id);
        for h in slots.hosts.iter_mut() {
            changed |= h.running.remove(&task_id);
        }
        if changed {
            self.wake_next(slots);
        }
    }

    /// Takes `task_id` out of the queue (it no longer waits for a host); its reservation goes
    /// to the next in line.
    pub fn leave(&self, task_id: u64) {
        let mut slots = self.slots();
        if slots.dequeue(task_id) {
            self.wake_next(slots);
        }
    }

    /// Puts `t` in the queue without asking for a slot (recovery: a parked task's place, so
    /// that [`Fleet::mark_ready`] wakes the first in line). Its step asks for itself next.
    pub fn queue(&self, t: &Ticket) {
        self.slots().enqueue(t);
    }

    /// Opens routing once every recovered task holds its slot again (and every waiting one is
    /// queued), and wakes the first in line.
    pub fn mark_ready(&self) {
        self.inner.ready.send_replace(true);
        self.wake_next(self.slots());
    }

    /// Waits until recovery has rebuilt what lives in memory ([`Fleet::mark_ready`]). Steps of
    /// recovered tasks may run (their timers fire) before that: they wait here first.
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The result only says whether the sender is gone; it lives in `self`.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Asks for a slot for `t` now: the host, if the queue's order gives `t` one on a host that
    /// offers what it needs (a task already holding a slot gets its host back). Otherwise `t`
    /// stays queued (until [`Fleet::leave`] or [`Fleet::release`]) and its task is woken when a
    /// slot is there for it: the caller parks, and leaves the queue if it stops waiting (see
    /// [`Fleet::place`]).
    pub fn try_acquire(&self, t: &Ticket) -> Option<String> {
        let mut slots = self.slots();
        if let Some(h) = slots.hosts.iter().find(|h| h.running.contains(&t.task_id)) {
            let host = h.id.clone();
            slots.dequeue(t.task_id);
            return Some(host);
        }
        slots.enqueue(t);
        if !*self.inner.ready.borrow() {
            return None;
        }
        let now = Timestamp::now();
        let granted = slots
            .plan(now, Some(t.task_id))
            .last()
            .filter(|(id, _)| *id == t.task_id)
            .map(|(_, i)| *i);
        let host = granted.map(|i| {
            slots.hosts[i].running.insert(t.task_id);
            slots.dequeue(t.task_id);
            slots.hosts[i].id.clone()
        });
        self.wake_next(slots);
        host
    }

    /// The queue place of `task_id` for one Route step: it leaves the queue when the step ends,
    /// unless the step parks waiting for a slot.
    pub fn place(&self, task_id: u64) -> QueuePlace<'_> {
        QueuePlace {
            fleet: self,
            task_id,
            keep: false,
        }
    }

    /// Tasks in the queue (waiting for a slot).
    pub fn queued(&self) -> usize {
        self.slots().waiting.len()
    }

    /// When the first pause that keeps `t` off a host it could run on ends: a parked task asks
    /// again then (nobody says a pause ended).
    pub fn next_pause_end(&self, t: &Ticket) -> Option<Timestamp> {
        let now = Timestamp::now();
        self.slots()
            .hosts
            .iter()
            .filter(|h| h.offers(t))
            .filter_map(|h| h.paused.get(&t.agent).map(|p| p.until))
            .filter(|until| *until > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(hosts: &str) -> (Fleet, Arc<Mutex<Vec<u64>>>) {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{hosts}"
        ))
        .unwrap();
        let f = Fleet::new(&config);
        let woken = Arc::new(Mutex::new(Vec::new()));
        let w = woken.clone();
        f.set_waker(move |id| w.lock().unwrap().push(id));
        for h in &config.hosts {
            f.set_health(&h.host_id, Health::Online, HashSet::new());
        }
        f.mark_ready();
        (f, woken)
    }

    fn host(id: &str, max: u32, caps: &str) -> String {
        format!(
            "[[hosts]]\nhost_id = \"{id}\"\nhostname = \"localhost\"\nagents = [\"a\"]\nmax_concurrent = {max}\nwork_root = \"/tmp/w\"\ncapabilities = [{caps}]\n"
        )
    }

    fn ticket(id: u64, priority: Priority, created: u64) -> Ticket {
        Ticket {
            task_id: id,
            priority,
            created: Timestamp(created),
            agent: "a".into(),
            capabilities: vec![],
            host: None,
        }
    }

    fn taken(woken: &Mutex<Vec<u64>>) -> Vec<u64> {
        std::mem::take(&mut *woken.lock().unwrap())
    }

    #[test]
    fn a_full_host_parks_the_next_task_and_wakes_it_when_a_slot_frees() {
        let (f, woken) = fleet(&host("h", 1, ""));
        let t2 = ticket(2, Priority::Normal, 2);
        assert_eq!(
            f.try_acquire(&ticket(1, Priority::Normal, 1)).as_deref(),
            Some("h")
        );
        assert_eq!(f.try_acquire(&t2), None);
        assert_eq!(f.queued(), 1, "the parked task keeps its place");
        assert_eq!(taken(&woken), Vec::<u64>::new());
        f.release(1);
        assert_eq!(taken(&woken), vec![2]);
        f.set_health("h", Health::Online, HashSet::new());
        assert_eq!(taken(&woken), Vec::<u64>::new(), "woken once per park");
        assert_eq!(f.try_acquire(&t2).as_deref(), Some("h"));
        assert_eq!(f.queued(), 0);
    }

    #[test]
    fn tasks_of_different_kinds_are_woken_in_queue_order_past_those_no_host_can_take() {
        let (f, woken) = fleet(&host("h", 2, "\"gpu\""));
        assert!(f.try_acquire(&ticket(10, Priority::Normal, 1)).is_some());
        assert!(f.try_acquire(&ticket(11, Priority::Normal, 1)).is_some());
        let with = |mut t: Ticket, caps: &[&str]| {
            t.capabilities = caps.iter().map(|c| c.to_string()).collect();
            t
        };
        // Ahead of everything: tasks that need what no host offers.
        for id in 100..110 {
            assert_eq!(
                f.try_acquire(&with(ticket(id, Priority::High, 0), &["tpu"])),
                None
            );
        }
        assert_eq!(f.try_acquire(&ticket(2, Priority::Low, 2)), None);
        assert_eq!(
            f.try_acquire(&with(ticket(3, Priority::High, 3), &["gpu"])),
            None
        );
        assert_eq!(f.try_acquire(&ticket(4, Priority::Normal, 4)), None);
        f.release(10);
        assert_eq!(
            taken(&woken),
            vec![3],
            "the highest priority the host can take"
        );
        assert_eq!(
            f.try_acquire(&with(ticket(3, Priority::High, 3), &["gpu"]))
                .as_deref(),
            Some("h")
        );
        f.release(11);
        assert_eq!(taken(&woken), vec![4], "then normal before low priority");
        assert_eq!(
            f.queued(),
            12,
            "the ten that no host offers, 2 and 4 are still queued"
        );
    }

    #[test]
    fn the_least_loaded_host_is_chosen() {
        let (f, _) = fleet(&format!("{}{}", host("small", 1, ""), host("big", 4, "")));
        f.hold("big", 10);
        // big is at 1/4, small at 0/1: small is less loaded.
        assert_eq!(
            f.try_acquire(&ticket(1, Priority::Normal, 1)).as_deref(),
            Some("small")
        );
        assert_eq!(
            f.try_acquire(&ticket(2, Priority::Normal, 2)).as_deref(),
            Some("big")
        );
    }

    #[test]
    fn a_higher_priority_task_gets_the_freed_slot_first() {
        let (f, woken) = fleet(&host("h", 1, ""));
        f.hold("h", 99);
        let low = ticket(1, Priority::Low, 1);
        let high = ticket(2, Priority::High, 5);
        assert_eq!(f.try_acquire(&low), None);
        assert_eq!(f.try_acquire(&high), None);
        f.release(99);
        assert_eq!(taken(&woken), vec![2]);
        assert_eq!(f.try_acquire(&low), None, "the slot is the high task's");
        assert_eq!(f.try_acquire(&high).as_deref(), Some("h"));
    }

    #[test]
    fn a_task_that_stops_waiting_passes_its_turn_to_the_next() {
        let (f, woken) = fleet(&host("h", 1, ""));
        f.hold("h", 99);
        assert_eq!(f.try_acquire(&ticket(1, Priority::Normal, 1)), None);
        assert_eq!(f.try_acquire(&ticket(2, Priority::Normal, 2)), None);
        f.release(99);
        assert_eq!(taken(&woken), vec![1]);
        // Task 1 was claimed by a pull agent meanwhile: its Route step leaves the queue.
        drop(f.place(1));
        assert_eq!(taken(&woken), vec![2]);
        assert_eq!(
            f.try_acquire(&ticket(2, Priority::Normal, 2)).as_deref(),
            Some("h")
        );
    }

    #[test]
    fn recovery_queues_waiting_tasks_and_wakes_the_first_in_line_when_ready() {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{}",
            host("h", 2, "")
        ))
        .unwrap();
        let f = Fleet::new(&config);
        let woken = Arc::new(Mutex::new(Vec::new()));
        let w = woken.clone();
        f.set_waker(move |id| w.lock().unwrap().push(id));
        f.set_health("h", Health::Online, HashSet::new());
        f.hold("h", 7);
        for (id, p) in [
            (1, Priority::Low),
            (2, Priority::Normal),
            (3, Priority::High),
        ] {
            f.queue(&ticket(id, p, id));
        }
        assert_eq!(
            taken(&woken),
            Vec::<u64>::new(),
            "nothing before recovery is done"
        );
        f.mark_ready();
        assert_eq!(
            taken(&woken),
            vec![3],
            "one free slot: the highest priority"
        );
    }

    #[test]
    fn capabilities_must_all_be_offered() {
        let (f, _) = fleet(&host("h", 1, "\"rust\""));
        let mut t = ticket(1, Priority::Normal, 1);
        t.capabilities = vec!["rust".into(), "gpu".into()];
        assert!(!f.can_serve(&t));
        t.capabilities = vec!["rust".into()];
        assert!(f.can_serve(&t));
    }

    #[test]
    fn an_unchecked_or_offline_host_is_never_chosen_and_online_wakes_the_queue() {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{}",
            host("h", 1, "")
        ))
        .unwrap();
        let f = Fleet::new(&config);
        let woken = Arc::new(Mutex::new(Vec::new()));
        let w = woken.clone();
        f.set_waker(move |id| w.lock().unwrap().push(id));
        f.mark_ready();
        let t = ticket(1, Priority::Normal, 1);
        assert!(f.can_serve(&t), "configuration says it could");
        assert_eq!(f.try_acquire(&t), None, "unchecked");
        let down = Health::Offline {
            reason: "down".into(),
        };
        f.set_health("h", down, HashSet::new());
        assert_eq!(f.try_acquire(&t), None, "offline");
        assert_eq!(taken(&woken), Vec::<u64>::new());
        f.set_health("h", Health::Online, HashSet::new());
        assert_eq!(taken(&woken), vec![1]);
        assert_eq!(f.try_acquire(&t).as_deref(), Some("h"));
    }

    #[test]
    fn a_host_missing_the_agents_cli_is_not_chosen_for_that_kind() {
        let (f, _) = fleet(&host("h", 1, ""));
        f.set_health("h", Health::Online, HashSet::from(["a".to_string()]));
        assert_eq!(f.try_acquire(&ticket(1, Priority::Normal, 1)), None);
        f.set_health("h", Health::Online, HashSet::new());
        assert!(f.try_acquire(&ticket(1, Priority::Normal, 1)).is_some());
    }

    #[test]
    fn nothing_is_routed_before_recovery_has_rebuilt_the_slots() {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{}",
            host("h", 1, "")
        ))
        .unwrap();
        let f = Fleet::new(&config);
        f.set_health("h", Health::Online, HashSet::new());
        assert_eq!(f.try_acquire(&ticket(1, Priority::Normal, 1)), None);
        f.hold("h", 7);
        f.mark_ready();
        assert_eq!(f.try_acquire(&ticket(1, Priority::Normal, 1)), None);
    }
}
