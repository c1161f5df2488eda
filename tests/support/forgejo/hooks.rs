//! Webhook delivery like Forgejo's (services/webhook/deliver.go + shared/payloader.go): the body
//! is the payload marshalled with 2-space indents and no trailing newline, signed with
//! hex HMAC-SHA256 under `X-Forgejo-Signature` / `X-Gitea-Signature` / `X-Gogs-Signature` and
//! `X-Hub-Signature-256: sha256=…`, with delivery id and event headers under every prefix. One
//! background task sends them in order (a failed POST is recorded, never retried) and applies the
//! test's [`DeliveryMode`]. Owns the record of every delivery.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::seq::SliceRandom;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How deliveries misbehave; settable at any time (applies to deliveries emitted afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    #[default]
    Normal,
    /// Never sent (recorded as [`Outcome::Dropped`]).
    Drop,
    /// Each sent twice with the same delivery id.
    Duplicate,
    /// Held, then sent in a shuffled batch on `flush()` or ~300 ms after the first one held.
    Reorder,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The receiver answered with this status.
    Answered(u16),
    /// The POST failed (connection refused, timeout…).
    Failed(String),
    Dropped,
}

/// One delivery attempt.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    /// `X-Forgejo-Event` (coarse).
    pub event: String,
    /// `X-Forgejo-Event-Type` (fine).
    pub event_type: String,
    pub delivery_id: String,
    /// The payload's `action`, if any.
    pub action: Option<String>,
    pub body: String,
    pub outcome: Outcome,
}

/// Forgejo's webhook deliverer times out after 5 s (`webhook.DELIVER_TIMEOUT`).
const TIMEOUT: Duration = Duration::from_secs(5);
const REORDER_WINDOW: Duration = Duration::from_millis(300);

#[derive(Clone)]
struct Target {
    url: String,
    secret: String,
}

#[derive(Clone)]
struct Delivery {
    target: Target,
    event: String,
    event_type: String,
    id: String,
    action: Option<String>,
    body: String,
}

enum Msg {
    Send(Delivery, DeliveryMode),
    Flush(oneshot::Sender<()>),
}

pub struct Outbox {
    tx: mpsc::UnboundedSender<Msg>,
    target: Mutex<Option<Target>>,
    mode: Mutex<DeliveryMode>,
    records: Arc<Mutex<Vec<DeliveryRecord>>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Outbox {
    /// Spawns the sender on the current runtime.
    pub fn start() -> Outbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let records = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(sender(rx, records.clone()));
        Outbox {
            tx,
            target: Mutex::new(None),
            mode: Mutex::new(DeliveryMode::Normal),
            records,
        }
    }

    pub fn set_target(&self, url: &str, secret: &str) {
        *locked(&self.target) = Some(Target {
            url: url.into(),
            secret: secret.into(),
        });
    }

    pub fn set_mode(&self, mode: DeliveryMode) {
        *locked(&self.mode) = mode;
    }

    pub fn records(&self) -> Vec<DeliveryRecord> {
        locked(&self.records).clone()
    }

    /// Queues a webhook (nothing without a target, like a repository without hooks).
    pub fn emit(&self, event: &str, event_type: &str, payload: Value) {
        let Some(target) = locked(&self.target).clone() else {
            return;
        };
        let body = serde_json::to_string_pretty(&payload).unwrap_or_default();
        let delivery = Delivery {
            target,
            event: event.into(),
            event_type: event_type.into(),
            id: delivery_id(),
            action: payload["action"].as_str().map(str::to_string),
            body,
        };
        let mode = *locked(&self.mode);
        if mode == DeliveryMode::Drop {
            locked(&self.records).push(delivery.record(Outcome::Dropped));
            return;
        }
        let _ = self.tx.send(Msg::Send(delivery, mode));
    }

    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

impl Delivery {
    fn record(&self, outcome: Outcome) -> DeliveryRecord {
        DeliveryRecord {
            event: self.event.clone(),
            event_type: self.event_type.clone(),
            delivery_id: self.id.clone(),
            action: self.action.clone(),
            body: self.body.clone(),
            outcome,
        }
    }

    fn headers(&self) -> Vec<(String, String)> {
        let sig = sign(&self.target.secret, self.body.as_bytes());
        let mut h = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("User-Agent".to_string(), "Go-http-client/1.1".to_string()),
        ];
        for prefix in ["Forgejo", "Gitea", "Gogs"] {
            h.push((format!("X-{prefix}-Delivery"), self.id.clone()));
            h.push((format!("X-{prefix}-Event"), self.event.clone()));
            h.push((format!("X-{prefix}-Event-Type"), self.event_type.clone()));
            h.push((format!("X-{prefix}-Signature"), sig.clone()));
        }
        h.push(("X-Hub-Signature-256".into(), format!("sha256={sig}")));
        h.push(("X-GitHub-Delivery".into(), self.id.clone()));
        h.push(("X-GitHub-Event".into(), self.event.clone()));
        h.push(("X-GitHub-Event-Type".into(), self.event_type.clone()));
        h
    }
}

/// Lowercase hex HMAC-SHA256 of `body` (empty when there is no secret, like Forgejo).
pub fn sign(secret: &str, body: &[u8]) -> String {
    if secret.is_empty() {
        return String::new();
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A random (version 4) UUID, like the hook task's.
fn delivery_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

async fn sender(mut rx: mpsc::UnboundedReceiver<Msg>, records: Arc<Mutex<Vec<DeliveryRecord>>>) {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .unwrap_or_default();
    let mut held: Vec<Delivery> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            Some(at) => tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(at) => {
                    release(&client, &records, &mut held).await;
                    deadline = None;
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match msg {
            None => return,
            Some(Msg::Send(d, DeliveryMode::Reorder)) => {
                held.push(d);
                deadline.get_or_insert_with(|| Instant::now() + REORDER_WINDOW);
            }
            Some(Msg::Send(d, mode)) => {
                post(&client, &records, &d).await;
                if mode == DeliveryMode::Duplicate {
                    post(&client, &records, &d).await;
                }
            }
            Some(Msg::Flush(ack)) => {
                release(&client, &records, &mut held).await;
                deadline = None;
                let _ = ack.send(());
            }
        }
    }
}

async fn release(
    client: &reqwest::Client,
    records: &Mutex<Vec<DeliveryRecord>>,
    held: &mut Vec<Delivery>,
) {
    held.shuffle(&mut rand::rng());
    for d in held.drain(..) {
        post(client, records, &d).await;
    }
}

async fn post(client: &reqwest::Client, records: &Mutex<Vec<DeliveryRecord>>, d: &Delivery) {
    let mut req = client.post(&d.target.url).body(d.body.clone());
    for (k, v) in d.headers() {
        req = req.header(k, v);
    }
    let outcome = match req.send().await {
        Ok(resp) => Outcome::Answered(resp.status().as_u16()),
        Err(e) => {
            eprintln!(
                "fake forgejo: webhook {} {} to {}: {e}",
                d.event_type, d.id, d.target.url
            );
            Outcome::Failed(e.to_string())
        }
    };
    locked(records).push(d.record(outcome));
}
