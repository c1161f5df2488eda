//! Host selection (SPEC §4 Route / Select host): which host runs a task — one that offers the
//! agent kind and capabilities, is healthy (its last check passed and found the agent's CLI), is
//! below its `max_concurrent`, least loaded first — in priority order (ties oldest first).
//!
//! Slots live in memory. After a restart they are rebuilt from the workflow states before any
//! task is routed ([`Fleet::hold`] for every task that holds a host, then [`Fleet::mark_ready`]),
//! so a recovered daemon never over-commits a host.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::workflow::Timestamp;

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

/// Queue order: higher priority first, then older, then lower id.
type QueueKey = (std::cmp::Reverse<Priority>, Timestamp, u64);

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

#[derive(Debug, Default)]
struct Slots {
    hosts: Vec<Host>,
    waiting: BTreeMap<QueueKey, Ticket>,
}

/// The daemon's hosts and who runs where. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<Slots>,
    changed: Notify,
    ready: watch::Sender<bool>,
}

/// Removes a ticket from the queue when its `acquire` ends, however it ends.
struct Waiting<'a> {
    fleet: &'a Fleet,
    key: QueueKey,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.fleet.slots().waiting.remove(&self.key);
        self.fleet.inner.changed.notify_waiters();
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
                    waiting: BTreeMap::new(),
                }),
                changed: Notify::new(),
                ready: watch::channel(false).0,
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // The lock guards plain bookkeeping that no code path leaves half-done, so a panic
        // elsewhere while it was held does not make it wrong: keep using it.
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some host could ever run this task (agent kind and capabilities).
    pub fn can_serve(&self, t: &Ticket) -> bool {
        self.slots().hosts.iter().any(|h| h.offers(t))
    }

    /// Records what a health check found: the host's health and the agent kinds whose CLI is
    /// missing there. Tasks waiting for a host are woken up.
    pub fn set_health(&self, host: &str, health: Health, missing: HashSet<String>) {
        if let Some(h) = self.slots().hosts.iter_mut().find(|h| h.id == host) {
            h.health = health;
            h.missing = missing;
        }
        self.inner.changed.notify_waiters();
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
        if let Some(h) = self.slots().hosts.iter_mut().find(|h| h.id == host) {
            let keep = h.paused.get(agent).is_some_and(|p| p.until >= until);
            if !keep {
                let reason = reason.to_string();
                h.paused.insert(agent.to_string(), Pause { until, reason });
            }
        }
        self.inner.changed.notify_waiters();
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

    /// Frees whatever slot `task_id` holds.
    pub fn release(&self, task_id: u64) {
        let mut freed = false;
        for h in self.slots().hosts.iter_mut() {
            freed |= h.running.remove(&task_id);
        }
        if freed {
            self.inner.changed.notify_waiters();
        }
    }

    /// Opens routing once every recovered task holds its slot again.
    pub fn mark_ready(&self) {
        self.inner.ready.send_replace(true);
        self.inner.changed.notify_waiters();
    }

    /// Waits until recovery has rebuilt what lives in memory ([`Fleet::mark_ready`]). Steps of
    /// recovered tasks may run (their timers fire) before that: they wait here first.
    pub async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        // The result only says whether the sender is gone; it lives in `self`.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Waits until the queue's order gives `t` a slot on a host that offers what it needs, and
    /// returns that host's id. A task already holding a slot gets its host back at once.
    pub async fn acquire(&self, t: &Ticket) -> String {
        self.wait_ready().await;
        let key = queue_key(t);
        self.slots().waiting.insert(key, t.clone());
        let _waiting = Waiting { fleet: self, key };
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(host) = self.try_grant(t.task_id) {
                return host;
            }
            // A pause that ends frees its host without anyone saying so.
            match self.next_pause_end(t) {
                Some(end) => {
                    let wait = end.until(Timestamp::now());
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// When the first pause that keeps `t` off a host it could run on ends.
    fn next_pause_end(&self, t: &Ticket) -> Option<Timestamp> {
        let now = Timestamp::now();
        self.slots()
            .hosts
            .iter()
            .filter(|h| h.offers(t))
            .filter_map(|h| h.paused.get(&t.agent).map(|p| p.until))
            .filter(|until| *until > now)
            .min()
    }

    /// Walks the queue in order, reserving for each ticket the least loaded free host that
    /// offers what it needs; grants the slot if `task_id` gets one.
    fn try_grant(&self, task_id: u64) -> Option<String> {
        let mut slots = self.slots();
        if let Some(h) = slots.hosts.iter().find(|h| h.running.contains(&task_id)) {
            return Some(h.id.clone());
        }
        let now = Timestamp::now();
        let mut reserved: Vec<usize> = slots.hosts.iter().map(|h| h.running.len()).collect();
        let mut grant = None;
        for ticket in slots.waiting.values() {
            let best = slots
                .hosts
                .iter()
                .enumerate()
                .filter(|(i, h)| h.can_take(ticket, now) && reserved[*i] < h.max_concurrent)
                .min_by(|(i, a), (j, b)| {
                    // Least loaded relative to capacity: a/ca < b/cb  <=>  a*cb < b*ca.
                    (reserved[*i] * b.max_concurrent).cmp(&(reserved[*j] * a.max_concurrent))
                })
                .map(|(i, _)| i);
            if let Some(i) = best {
                if ticket.task_id == task_id {
                    grant = Some(i);
                    break;
                }
                reserved[i] += 1;
            }
        }
        let i = grant?;
        slots.hosts[i].running.insert(task_id);
        Some(slots.hosts[i].id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fleet(hosts: &str) -> Fleet {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{hosts}"
        ))
        .unwrap();
        let f = Fleet::new(&config);
        for h in &config.hosts {
            f.set_health(&h.host_id, Health::Online, HashSet::new());
        }
        f.mark_ready();
        f
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

    async fn granted(f: &Fleet, t: &Ticket) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(50), f.acquire(t))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_full_host_makes_the_next_task_wait_until_a_slot_frees() {
        let f = fleet(&host("h", 1, ""));
        assert_eq!(
            granted(&f, &ticket(1, Priority::Normal, 1))
                .await
                .as_deref(),
            Some("h")
        );
        assert_eq!(granted(&f, &ticket(2, Priority::Normal, 2)).await, None);
        f.release(1);
        assert_eq!(
            granted(&f, &ticket(2, Priority::Normal, 2))
                .await
                .as_deref(),
            Some("h")
        );
    }

    #[tokio::test]
    async fn the_least_loaded_host_is_chosen() {
        let f = fleet(&format!("{}{}", host("small", 1, ""), host("big", 4, "")));
        f.hold("big", 10);
        // big is at 1/4, small at 0/1: small is less loaded.
        assert_eq!(
            granted(&f, &ticket(1, Priority::Normal, 1))
                .await
                .as_deref(),
            Some("small")
        );
        assert_eq!(
            granted(&f, &ticket(2, Priority::Normal, 2))
                .await
                .as_deref(),
            Some("big")
        );
    }

    #[tokio::test]
    async fn a_higher_priority_task_gets_the_freed_slot_first() {
        let f = fleet(&host("h", 1, ""));
        f.hold("h", 99);
        let low = ticket(1, Priority::Low, 1);
        let high = ticket(2, Priority::High, 5);
        let (f1, f2) = (f.clone(), f.clone());
        let l = tokio::spawn(async move { f1.acquire(&low).await });
        let h = tokio::spawn(async move { f2.acquire(&high).await });
        tokio::time::sleep(Duration::from_millis(30)).await;
        f.release(99);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(h.is_finished() && !l.is_finished());
        l.abort();
    }

    #[tokio::test]
    async fn capabilities_must_all_be_offered() {
        let f = fleet(&host("h", 1, "\"rust\""));
        let mut t = ticket(1, Priority::Normal, 1);
        t.capabilities = vec!["rust".into(), "gpu".into()];
        assert!(!f.can_serve(&t));
        t.capabilities = vec!["rust".into()];
        assert!(f.can_serve(&t));
    }

    #[tokio::test]
    async fn an_unchecked_or_offline_host_is_never_chosen_and_online_wakes_the_queue() {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{}",
            host("h", 1, "")
        ))
        .unwrap();
        let f = Fleet::new(&config);
        f.mark_ready();
        let t = ticket(1, Priority::Normal, 1);
        assert!(f.can_serve(&t), "configuration says it could");
        assert_eq!(granted(&f, &t).await, None, "unchecked");
        f.set_health(
            "h",
            Health::Offline {
                reason: "down".into(),
            },
            HashSet::new(),
        );
        assert_eq!(granted(&f, &t).await, None, "offline");
        let f2 = f.clone();
        let waiting =
            tokio::spawn(async move { f2.acquire(&ticket(1, Priority::Normal, 1)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        f.set_health("h", Health::Online, HashSet::new());
        let host = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert_eq!(host.unwrap().unwrap(), "h");
    }

    #[tokio::test]
    async fn a_host_missing_the_agents_cli_is_not_chosen_for_that_kind() {
        let f = fleet(&host("h", 1, ""));
        f.set_health("h", Health::Online, HashSet::from(["a".to_string()]));
        assert_eq!(granted(&f, &ticket(1, Priority::Normal, 1)).await, None);
        f.set_health("h", Health::Online, HashSet::new());
        assert!(granted(&f, &ticket(1, Priority::Normal, 1)).await.is_some());
    }

    #[tokio::test]
    async fn nothing_is_routed_before_recovery_has_rebuilt_the_slots() {
        let config = Config::from_toml_str(&format!(
            "[[agents]]\nname = \"a\"\ncli_template = \"a {{prompt_file}}\"\noutput_format = \"raw\"\n{}",
            host("h", 1, "")
        ))
        .unwrap();
        let f = Fleet::new(&config);
        f.set_health("h", Health::Online, HashSet::new());
        assert_eq!(granted(&f, &ticket(1, Priority::Normal, 1)).await, None);
        f.hold("h", 7);
        f.mark_ready();
        assert_eq!(granted(&f, &ticket(1, Priority::Normal, 1)).await, None);
    }
}
