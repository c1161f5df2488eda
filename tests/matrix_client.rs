//! The bot's Matrix client (`io::matrix`) against a real Synapse on loopback: the first start
//! logs in and keeps its session, a restart is the same device without a new login, an access
//! token is adopted as its own device, and a message re-sent under the same transaction id is
//! posted once (what makes notifications exactly once across crashes).

#[path = "support/synapse.rs"]
mod synapse;

use agent_fleet::io::matrix::{Credentials, MatrixClient, MatrixError};
use serde_json::{Value, json};
use synapse::{Options, Synapse};

const BOT_PASSWORD: &str = "bot-password-1";

/// The homeserver's list of the bot's devices, asked with a token of the bot.
async fn devices(server: &Synapse, token: &str) -> Vec<String> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}/_matrix/client/v3/devices", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn bot(server: &Synapse, dir: &std::path::Path) -> MatrixClient {
    MatrixClient::connect(
        &server.url(),
        &Synapse::user_id("fleet"),
        Credentials::Password(BOT_PASSWORD.into()),
        dir,
    )
    .await
    .unwrap()
}

fn stored_token(dir: &std::path::Path) -> String {
    let session: Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    session["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_restart_restores_the_same_device_without_logging_in_again() {
    let server = Synapse::start(Options::default()).await;
    server.register("fleet", BOT_PASSWORD, false).await;
    let dir = tempfile::tempdir().unwrap();

    let first = bot(&server, dir.path()).await;
    let device = first.device_id().unwrap();
    drop(first);
    let token = stored_token(dir.path());
    let before = devices(&server, &token).await;
    assert!(before.contains(&device.to_string()), "{before:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("session.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the session file holds a token");

    let again = bot(&server, dir.path()).await;
    assert_eq!(again.device_id().unwrap(), device);
    again.sync_once().await.unwrap();
    // No new device: the restart did not log in.
    assert_eq!(devices(&server, &token).await, before);
}

#[tokio::test]
async fn an_access_token_is_adopted_with_its_own_device() {
    let server = Synapse::start(Options::default()).await;
    server.register("fleet", BOT_PASSWORD, false).await;
    let token = server.login(&Synapse::user_id("fleet"), BOT_PASSWORD).await;
    let before = devices(&server, &token).await;
    let dir = tempfile::tempdir().unwrap();

    let client = MatrixClient::connect(
        &server.url(),
        &Synapse::user_id("fleet"),
        Credentials::AccessToken(token.clone()),
        dir.path(),
    )
    .await
    .unwrap();
    // The token's own device (the last login's), and no new one.
    assert_eq!(devices(&server, &token).await, before);
    assert!(before.contains(&client.device_id().unwrap().to_string()));
    assert_eq!(stored_token(dir.path()), token);
}

#[tokio::test]
async fn a_token_of_someone_else_is_a_clear_error() {
    let server = Synapse::start(Options::default()).await;
    server.register("fleet", BOT_PASSWORD, false).await;
    server.register("alice", "alice-pw-1", false).await;
    let alice = server.login(&Synapse::user_id("alice"), "alice-pw-1").await;
    let dir = tempfile::tempdir().unwrap();

    let err = MatrixClient::connect(
        &server.url(),
        &Synapse::user_id("fleet"),
        Credentials::AccessToken(alice),
        dir.path(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, MatrixError::TokenOwner { .. }), "{err}");
    assert!(err.to_string().contains("@alice:localhost"), "{err}");
    assert!(!dir.path().join("session.json").exists());
}

#[tokio::test]
async fn a_message_sent_twice_under_one_transaction_id_is_posted_once() {
    let server = Synapse::start(Options::default()).await;
    server.register("fleet", BOT_PASSWORD, false).await;
    server.register("alice", "alice-pw-1", false).await;
    let alice = server.login(&Synapse::user_id("alice"), "alice-pw-1").await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/_matrix/client/v3/createRoom", server.url()))
        .bearer_auth(&alice)
        .json(&json!({ "preset": "private_chat", "invite": [Synapse::user_id("fleet")] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = created["room_id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let client = bot(&server, dir.path()).await;
    let room_id = client.join(&room).await.unwrap();

    let first = client
        .send(
            &room_id,
            "task 7 completed",
            "<b>task 7</b> completed",
            "feed-7",
        )
        .await
        .unwrap();
    // A restart (as after a crash between sending and recording it) sends it again.
    drop(client);
    let client = bot(&server, dir.path()).await;
    client.sync_once().await.unwrap();
    let second = client
        .send(
            &room_id,
            "task 7 completed",
            "<b>task 7</b> completed",
            "feed-7",
        )
        .await
        .unwrap();
    assert_eq!(first, second);

    let path = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        server.url(),
        room.replace('!', "%21").replace(':', "%3A")
    );
    let page: Value = http
        .get(path)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: Vec<&Value> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert_eq!(texts[0]["content"]["body"], "task 7 completed");
    assert_eq!(
        texts[0]["content"]["formatted_body"],
        "<b>task 7</b> completed"
    );
}
