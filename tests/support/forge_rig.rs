//! The rig of the end-to-end forge tests: the fake Forgejo (`forgejo.rs`) with `acme/widgets`
//! (and issues opened up front), a real daemon (`daemon.rs`) whose `[forgejo]` section points at
//! it, the forge's webhooks aimed at the daemon; what the tests wait for (a task of an issue, a
//! task's status, labels that settle) and read (status labels, marked comments, history);
//! reference webhook deliveries sent by hand, verbatim or edited and signed again.
//!
//! Includes `daemon.rs` and `forgejo.rs` as its own submodules: a test includes this module only
//! and uses them as `forge_rig::daemon` and `forge_rig::forgejo`.

#![allow(dead_code)] // each includer uses a part of it

#[path = "daemon.rs"]
pub mod daemon;
#[path = "forgejo.rs"]
pub mod forgejo;

use std::any::Any;
use std::path::Path;
use std::time::{Duration, Instant};

use daemon::{Fleet, REMOTE_AGENT, Setup, story};
use forgejo::{DeliveryMode, FakeForgejo, RepoInfo};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tempfile::TempDir;

/// The daemon's forge token (the fake forge's only token).
pub const FORGE_TOKEN: &str = "rig-forge-token-9c1d";
/// The webhook secret of the daemon and the forge: the one the reference deliveries are signed
/// with.
pub const SECRET: &str = "webhook-secret-for-tests";
/// The repository every rig has (and the reference deliveries name).
pub const REPO: &str = "acme/widgets";
/// How long a test waits for anything the daemon or the forge does.
pub const LONG: Duration = Duration::from_secs(90);
const REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference/forgejo/webhooks"
);

/// What a rig's forge holds and its daemon's config says.
pub struct Options {
    /// `forgejo.repos` (TOML); `None` leaves the key out (webhooks from every repository).
    pub repos: Option<String>,
    /// `forgejo.reconcile_interval`, if set.
    pub reconcile: Option<&'static str>,
    /// `forgejo.review_debounce`, if set.
    pub review_debounce: Option<&'static str>,
    /// `forgejo.trigger_label`, if set.
    pub trigger_label: Option<&'static str>,
    pub default_agent: &'static str,
    /// More `[forgejo]` keys.
    pub keys: String,
    pub delivery: DeliveryMode,
    /// Issues #1, #2, … opened (titled `issue N`) before the daemon starts: the labels of each.
    pub issues: Vec<&'static [&'static str]>,
    /// Whether the forge's webhooks go to the daemon (else the test sends every delivery).
    pub hook: bool,
    /// The rest of the daemon's setup: its `extra` follows the `[forgejo]` section, its `env`
    /// joins the forge's token and secret.
    pub setup: Setup,
}

impl Default for Options {
    /// `repos = ["acme/widgets"]`, reconciled every second, reviews debounced 300 ms, issues go to
    /// the demo agent (on the local host), webhooks delivered normally.
    fn default() -> Self {
        Options {
            repos: Some(format!("[\"{REPO}\"]")),
            reconcile: Some("1s"),
            review_debounce: Some("300ms"),
            trigger_label: None,
            default_agent: "demo",
            keys: String::new(),
            delivery: DeliveryMode::Normal,
            issues: Vec::new(),
            hook: true,
            setup: Setup::default(),
        }
    }
}

impl Options {
    /// A daemon that only takes the deliveries a test sends: no `repos` and no reconciliation,
    /// no webhook target on the forge, issues labelled `trigger_label` go to an agent kind no
    /// host offers (their tasks wait and nothing is cloned).
    pub fn deliveries_only(trigger_label: &'static str) -> Options {
        Options {
            repos: None,
            reconcile: None,
            review_debounce: None,
            trigger_label: Some(trigger_label),
            default_agent: "remote",
            hook: false,
            setup: Setup {
                extra: REMOTE_AGENT.to_string(),
                // Pull agents may register: the kind no host offers is theirs.
                server: "registration_token_env = \"E2E_FLEET_REGISTRATION_TOKEN\"".into(),
                ..Setup::default()
            },
            ..Options::default()
        }
    }
}

/// The daemon's setup for a forge at `base_url`: `o.setup` with the `[forgejo]` section of `o`
/// in front of its `extra`, and the forge's token and secret in its environment.
pub fn setup(base_url: &str, o: Options) -> Setup {
    let mut forgejo = format!(
        "\n[forgejo]\nbase_url = \"{base_url}\"\ntoken_env = \"RIG_FORGE_TOKEN\"\n\
         webhook_secret_env = \"RIG_FORGE_SECRET\"\ndefault_agent = \"{}\"\n",
        o.default_agent
    );
    let optional = [
        ("repos", o.repos),
        ("reconcile_interval", o.reconcile.map(quoted)),
        ("review_debounce", o.review_debounce.map(quoted)),
        ("trigger_label", o.trigger_label.map(quoted)),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            forgejo.push_str(&format!("{key} = {value}\n"));
        }
    }
    forgejo.push_str(&o.keys);
    let mut setup = o.setup;
    setup.extra = format!("{forgejo}\n{}", setup.extra);
    setup.env.push(("RIG_FORGE_TOKEN", FORGE_TOKEN.to_string()));
    setup.env.push(("RIG_FORGE_SECRET", SECRET.to_string()));
    setup
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// The fake forge (its files in `dir`) with `acme/widgets`.
pub async fn forge_with_widgets(dir: &Path) -> (FakeForgejo, RepoInfo) {
    let forge = FakeForgejo::start(dir, FORGE_TOKEN);
    let repo = forge.create_repo("acme", "widgets").await;
    (forge, repo)
}

/// A fake forge and a daemon on it.
pub struct Rig {
    pub forge: FakeForgejo,
    /// `acme/widgets` as the forge created it.
    pub repo: RepoInfo,
    /// Servers the fleet's hosts run on (sshd…): stopped before the fleet's directory goes.
    pub servers: Vec<Box<dyn Any>>,
    pub fleet: Fleet,
}

impl Rig {
    /// The rig in a directory of its own.
    pub async fn start(o: Options) -> Rig {
        Rig::start_in(tempfile::tempdir().unwrap(), o).await
    }

    /// The rig in `dir` (made beforehand, e.g. to put an agent script or an sshd in it).
    pub async fn start_in(dir: TempDir, o: Options) -> Rig {
        let (forge, repo) = forge_with_widgets(dir.path()).await;
        forge.set_delivery(o.delivery).await;
        for (i, labels) in o.issues.iter().enumerate() {
            let n = forge
                .open_issue(REPO, &format!("issue {}", i + 1), "", labels)
                .await;
            assert_eq!(n, i as u64 + 1);
        }
        let hook = o.hook;
        let fleet = Fleet::start_in(dir, setup(&forge.url(), o)).await;
        let rig = Rig {
            forge,
            repo,
            servers: Vec::new(),
            fleet,
        };
        if hook {
            rig.hook();
        }
        rig
    }

    /// Points the forge's webhook at the daemon (its port changes on every start).
    pub fn hook(&self) {
        self.forge
            .set_webhook(&self.fleet.api("/webhooks/forgejo"), SECRET);
    }

    /// SIGKILLs the daemon, starts it again and points the webhook at it.
    pub async fn restart(&mut self) {
        self.fleet.kill();
        self.fleet.spawn().await;
        self.hook();
    }

    /// SIGKILLs the daemon, renames its host `local` `spare` ([`rename_the_host`]), starts it
    /// again and points the webhook at it: the tasks' host is gone from the config.
    pub async fn restart_with_the_host_renamed(&mut self) {
        self.fleet.kill();
        daemon::rename_the_host(&self.fleet);
        self.fleet.spawn().await;
        self.hook();
    }

    /// Every task, oldest first.
    pub async fn tasks(&self) -> Vec<Value> {
        let (status, list) = self.fleet.get("/tasks").await;
        assert_eq!(status, 200, "{list}");
        let mut tasks = list["tasks"].as_array().cloned().unwrap_or_default();
        tasks.sort_by_key(|t| t["id"].as_str().unwrap_or("").parse::<u64>().unwrap_or(0));
        tasks
    }

    /// The ids of the tasks of issue `n`, oldest first.
    pub async fn tasks_of(&self, n: u64) -> Vec<String> {
        let source = format!("{REPO}#{n}");
        self.tasks()
            .await
            .iter()
            .filter(|t| t["source"] == source.as_str())
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect()
    }

    /// Calls `check` every `every` until it gives a value; after [`LONG`], panics with the last
    /// reason it gave why not, and the daemon's log.
    pub async fn poll<T>(
        &self,
        every: Duration,
        mut check: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + LONG;
        loop {
            match check().await {
                Ok(value) => return value,
                Err(why) => assert!(
                    Instant::now() < deadline,
                    "{why}\ndaemon log:\n{}",
                    self.fleet.log()
                ),
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The (first) task of issue `n`, once there is one.
    pub async fn task_of(&self, n: u64) -> String {
        self.poll(Duration::from_millis(100), async || {
            let first = self.tasks_of(n).await.into_iter().next();
            first.ok_or_else(|| format!("no task for issue #{n}"))
        })
        .await
    }

    /// `alice` opens an issue labelled `agent-fleet` (the trigger); its number.
    pub async fn open_triggered(&self, title: &str, body: &str) -> u64 {
        self.forge
            .open_issue(REPO, title, body, &["agent-fleet"])
            .await
    }

    /// An issue opened with the trigger: its number and its task, once there is one.
    pub async fn issue_task(&self, title: &str, body: &str) -> (u64, String) {
        self.labelled_issue_task(title, body, &["agent-fleet"])
            .await
    }

    /// An issue opened with `labels`: its number and its task, once there is one.
    pub async fn labelled_issue_task(
        &self,
        title: &str,
        body: &str,
        labels: &[&str],
    ) -> (u64, String) {
        let n = self.forge.open_issue(REPO, title, body, labels).await;
        (n, self.task_of(n).await)
    }

    /// An issue `who` assigns to themself before labelling it with the trigger: its number and
    /// its task, once there is one.
    pub async fn self_assigned_issue_task(
        &self,
        who: &str,
        title: &str,
        body: &str,
    ) -> (u64, String) {
        let n = self.forge.open_issue(REPO, title, body, &[]).await;
        self.forge.assign(REPO, n, &[who]).await;
        self.forge.set_issue_labels(REPO, n, &["agent-fleet"]).await;
        (n, self.task_of(n).await)
    }

    /// Waits until issue `n` has `count` tasks (and no more); the newest one.
    pub async fn nth_task(&self, n: u64, count: usize) -> String {
        self.poll(Duration::from_millis(100), async || {
            let ids = self.tasks_of(n).await;
            if ids.len() < count {
                return Err(format!("issue #{n} never had {count} task(s) ({ids:?})"));
            }
            assert_eq!(ids.len(), count, "more tasks than expected: {ids:?}");
            Ok(ids[count - 1].clone())
        })
        .await
    }

    /// Polls task `id` until `pred` holds; panics with the task and the log after [`LONG`].
    pub async fn until(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.poll(Duration::from_millis(100), async || {
            let t = self.fleet.task(id).await;
            if pred(&t) {
                Ok(t)
            } else {
                Err(format!("task {id} never {what}:\n{}", story(&t)))
            }
        })
        .await
    }

    /// Waits until task `id` has status `status`.
    pub async fn until_status(&self, id: &str, status: &str) -> Value {
        self.until(id, &format!("reached {status}"), |t| t["status"] == status)
            .await
    }

    /// Waits until task `id` started a run.
    pub async fn until_started(&self, id: &str) -> Value {
        self.until(id, "started a run", |t| {
            t["runs"].as_array().is_some_and(|r| !r.is_empty())
        })
        .await
    }

    /// The task's status stays `status` for a while (its inbox is worked off meanwhile).
    pub async fn stays(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            let t = self.fleet.task(id).await;
            assert_eq!(t["status"], status, "{}", story(&t));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `pred` holds (on the forge, say); panics with `what` after [`LONG`].
    pub async fn eventually(&self, what: &str, pred: impl Fn() -> bool) {
        assert!(
            daemon::eventually(LONG, pred).await,
            "never {what}; daemon log:\n{}",
            self.fleet.log()
        );
    }

    /// Cancels task `id` through the API (`body`: the request's).
    pub async fn cancel(&self, id: &str, body: Value) {
        let (status, answer) = self.fleet.post(&format!("/tasks/{id}/cancel"), body).await;
        assert_eq!(status, 202, "{answer}");
    }

    /// Issue `n`'s `status:*` labels, sorted.
    pub fn status_labels(&self, n: u64) -> Vec<String> {
        let mut l: Vec<String> = self
            .forge
            .issue_labels(REPO, n)
            .into_iter()
            .filter(|l| l.starts_with("status:"))
            .collect();
        l.sort();
        l
    }

    /// Waits until issue `n`'s status labels are `want` (and stay so for a second).
    pub async fn labels_settle(&self, n: u64, want: &[&str]) {
        let mut since: Option<Instant> = None;
        self.poll(Duration::from_millis(100), async || {
            let labels = self.status_labels(n);
            if labels != want {
                since = None;
                return Err(format!(
                    "issue #{n} has status labels {labels:?}, not {want:?}"
                ));
            }
            let at = *since.get_or_insert_with(Instant::now);
            if at.elapsed() > Duration::from_secs(1) {
                Ok(())
            } else {
                Err(format!("issue #{n}'s status labels {want:?} did not stay"))
            }
        })
        .await
    }

    /// Waits until issue `n` carries the label `label` and is assigned to `who`.
    pub async fn issue_shows(&self, n: u64, label: &str, who: &[&str]) {
        self.poll(Duration::from_millis(50), async || {
            let labels = self.forge.issue_labels(REPO, n);
            let assignees = self.forge.issue_assignees(REPO, n);
            if labels.iter().any(|l| l == label) && assignees == who {
                return Ok(());
            }
            Err(format!(
                "issue #{n} never showed {label} assigned to {who:?}: labels {labels:?}, \
                 assignees {assignees:?}"
            ))
        })
        .await
    }

    /// How many of issue `n`'s comments carry `marker`.
    pub fn marked(&self, n: u64, marker: &str) -> usize {
        self.forge
            .comments(REPO, n)
            .iter()
            .filter(|c| c.body.contains(marker))
            .count()
    }

    /// How many receipt comments issue `n` has.
    pub fn receipts(&self, n: u64) -> usize {
        self.marked(n, ":effect=receipt -->")
    }

    /// No request the daemon made is one the real Forgejo would refuse.
    pub fn assert_honest(&self) {
        let v = self.forge.violations();
        assert!(
            v.is_empty(),
            "requests the real Forgejo would refuse: {v:#?}"
        );
    }

    /// Sends `d`, which must be answered 200; the outcome the daemon names.
    pub async fn send_ok(&self, d: &Delivery) -> String {
        let (status, answer) = d.send(&self.fleet).await;
        assert_eq!(status, 200, "{answer}\nlog:\n{}", self.fleet.log());
        answer["outcome"].as_str().unwrap_or_default().to_string()
    }
}

/// The task's pull request.
pub fn pr_of(t: &Value) -> u64 {
    t["pr_number"].as_u64().expect("a pull request number")
}

/// Whether the task is back in review after `rounds` review rounds, one run each after the first.
pub fn back_in_review(t: &Value, rounds: usize) -> bool {
    t["review_count"] == rounds
        && t["runs"].as_array().is_some_and(|r| r.len() == rounds + 1)
        && t["status"] == "review_pending"
}

/// A review's comment `text` on line 1 of the demo agent's file.
pub fn line_comment(text: &str) -> Vec<(String, u64, String)> {
    vec![("DEMO-AGENT.md".to_string(), 1, text.to_string())]
}

/// The texts of the task's history events, one a line.
pub fn history(t: &Value) -> String {
    events(t).join("\n")
}

/// The texts of the task's history events.
pub fn events(t: &Value) -> Vec<&str> {
    t["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["text"].as_str())
        .collect()
}

/// The prompt of the task's run `i`.
pub fn prompt_of_run(t: &Value, i: usize) -> String {
    std::fs::read_to_string(format!("{}/prompt.md", run_dir(t, i))).unwrap()
}

/// The directory of the task's run `i`.
pub fn run_dir(t: &Value, i: usize) -> String {
    t["runs"][i]["run_dir"].as_str().unwrap().to_string()
}

/// A webhook delivery: its headers (name, value) and its exact body.
#[derive(Clone)]
pub struct Delivery {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Delivery {
    /// A reference delivery (`tests/fixtures/reference/forgejo/webhooks`), verbatim.
    pub fn reference(name: &str) -> Delivery {
        let headers = std::fs::read_to_string(format!("{REFERENCE}/{name}.headers")).unwrap();
        let headers = headers
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Delivery {
            headers,
            body: std::fs::read(format!("{REFERENCE}/{name}.json")).unwrap(),
        }
    }

    /// The same body under another delivery id (a new delivery of the same event).
    pub fn with_id(mut self, id: &str) -> Delivery {
        for (k, v) in &mut self.headers {
            if k.ends_with("-Delivery") {
                *v = id.to_string();
            }
        }
        self
    }

    /// The payload changed by `edit`, then signed again with [`SECRET`].
    pub fn edited(mut self, edit: impl FnOnce(&mut Value)) -> Delivery {
        let mut payload: Value = serde_json::from_slice(&self.body).unwrap();
        edit(&mut payload);
        self.body = serde_json::to_vec_pretty(&payload).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&self.body);
        let signature = hex::encode(mac.finalize().into_bytes());
        self.headers.retain(|(k, _)| !k.starts_with("X-Hub-"));
        for (k, v) in &mut self.headers {
            if k.ends_with("-Signature") {
                *v = signature.clone();
            }
        }
        self
    }

    /// Without the headers whose name passes `drop`.
    pub fn without(mut self, drop: impl Fn(&str) -> bool) -> Delivery {
        self.headers.retain(|(k, _)| !drop(k));
        self
    }

    /// Its `X-Forgejo-Delivery`.
    pub fn id(&self) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k == "X-Forgejo-Delivery")
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    /// POSTs it to the daemon's webhook endpoint: the status and the JSON answer.
    pub async fn send(&self, fleet: &Fleet) -> (u16, Value) {
        let mut req = fleet.http.post(fleet.api("/webhooks/forgejo"));
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let r = req.body(self.body.clone()).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}
