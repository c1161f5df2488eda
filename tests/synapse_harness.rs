//! The Synapse test harness itself, driven over the plain Matrix client-server API: a server
//! starts on loopback, registers users (admins too) who can log in, stops and starts again
//! with its users and their tokens, accepts many quick messages by default and answers 429
//! with `retry_after_ms` when a test lowers `rc_message`.

#[path = "support/synapse.rs"]
mod synapse;

use std::net::TcpStream;

use serde_json::{Value, json};
use synapse::{Options, RateLimit, Synapse};

/// `GET path` with `token`: the status and the JSON body (Null when there is none).
async fn get(server: &Synapse, token: &str, path: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /createRoom` (private, nobody invited): the room id.
async fn create_room(server: &Synapse, token: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/createRoom", server.url()))
        .bearer_auth(token)
        .json(&json!({ "preset": "private_chat" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "createRoom");
    let body: Value = response.json().await.unwrap();
    body["room_id"].as_str().unwrap().to_string()
}

/// `PUT /rooms/{room}/send/m.room.message/{txn}` with a text: the status and the JSON body.
async fn send_text(server: &Synapse, token: &str, room: &str, txn: usize) -> (u16, Value) {
    let room = room.replace('!', "%21").replace(':', "%3A");
    let url = format!(
        "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/t{txn}",
        server.url()
    );
    let response = reqwest::Client::new()
        .put(url)
        .bearer_auth(token)
        .json(&json!({ "msgtype": "m.text", "body": format!("message {txn}") }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn synapse_starts_on_loopback_and_registers_users_who_can_log_in() {
    let server = Synapse::start(Options::default()).await;
    assert!(
        server.url().starts_with("http://127.0.0.1:"),
        "{}",
        server.url()
    );
    assert!(server.dir().join("signing.key").is_file());

    assert_eq!(
        server.register("alice", "pw-a", false).await,
        "@alice:localhost"
    );
    assert_eq!(
        server.register("root", "pw-r", true).await,
        "@root:localhost"
    );
    let alice = server.login("alice", "pw-a").await;
    let root = server.login("@root:localhost", "pw-r").await;

    let (status, whoami) = get(&server, &alice, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(
        (status, whoami["user_id"].as_str()),
        (200, Some("@alice:localhost"))
    );
    // Only the admin may use the admin API, and it says alice is none.
    let (status, user) = get(&server, &root, "/_synapse/admin/v2/users/@alice:localhost").await;
    assert_eq!((status, &user["admin"]), (200, &json!(false)), "{user}");
    let (status, _) = get(&server, &alice, "/_synapse/admin/v2/users/@root:localhost").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_stopped_synapse_starts_again_with_its_users() {
    let mut server = Synapse::start(Options::default()).await;
    server.register("bob", "pw-b", false).await;
    let before = server.login("bob", "pw-b").await;
    let url = server.url();

    server.stop().await;
    assert!(!server.is_running());
    let refused = TcpStream::connect(("127.0.0.1", server.port()))
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    assert!(refused, "nothing listens on the stopped server's port");

    server.start_again().await;
    assert!(server.is_running());
    assert_eq!(server.url(), url);
    let (status, whoami) = get(&server, &before, "/_matrix/client/v3/account/whoami").await;
    assert_eq!(
        (status, whoami["user_id"].as_str()),
        (200, Some("@bob:localhost")),
        "{whoami}"
    );
    server.login("bob", "pw-b").await;
}

#[tokio::test]
async fn by_default_synapse_accepts_many_quick_messages() {
    let server = Synapse::start(Options::default()).await;
    server.register("dave", "pw-d", false).await;
    let token = server.login("dave", "pw-d").await;
    let room = create_room(&server, &token).await;
    // Synapse's own default (0.2 per second, a burst of 10) would refuse most of these.
    for txn in 0..50 {
        let (status, body) = send_text(&server, &token, &room, txn).await;
        assert_eq!(status, 200, "message {txn}: {body}");
    }
}

#[tokio::test]
async fn a_low_rc_message_makes_synapse_answer_429_with_retry_after_ms() {
    let options = Options {
        rc_message: Some(RateLimit {
            per_second: 0.1,
            burst_count: 3,
        }),
        ..Options::default()
    };
    let server = Synapse::start(options).await;
    server.register("carol", "pw-c", false).await;
    let token = server.login("carol", "pw-c").await;
    let room = create_room(&server, &token).await;

    let mut refused = None;
    for txn in 0..10 {
        let (status, body) = send_text(&server, &token, &room, txn).await;
        if status == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 200, "message {txn}: {body}");
    }
    let body = refused.expect("a 429 within 10 quick messages");
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    let retry = body["retry_after_ms"].as_u64();
    assert!(retry.is_some_and(|ms| ms > 0), "{body}");
}
