//! `GET /openapi.json` tells the truth: it is a valid OpenAPI 3.1 document, it lists exactly the
//! routes the router serves (each with the admin token where the router asks for it), and the
//! real answers of the daemon — bodies and statuses — are the ones it documents.

#[path = "support/daemon.rs"]
mod daemon;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_fleet::api::{self, AppState};
use agent_fleet::config::Config;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use daemon::{Fleet, Setup, TOKEN};
use serde_json::{Value, json};
use tower::ServiceExt;

const T: Duration = Duration::from_secs(30);

/// The official OpenAPI 3.1 schema (see tests/fixtures/openapi/README.md).
const OAS_31_SCHEMA: &str = include_str!("fixtures/openapi/schema-3.1-2022-10-07.json");

/// Every route of SPEC §5 implemented so far. A new route is added here and in the router.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/agents"),
    ("post", "/api/v1/agents/deregister"),
    ("post", "/api/v1/agents/heartbeat"),
    ("post", "/api/v1/agents/register"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/hosts"),
    ("post", "/api/v1/receipts"),
    ("get", "/api/v1/tasks"),
    ("post", "/api/v1/tasks"),
    ("post", "/api/v1/tasks/dequeue"),
    ("get", "/api/v1/tasks/{id}"),
    ("post", "/api/v1/tasks/{id}/assign"),
    ("post", "/api/v1/tasks/{id}/cancel"),
    ("post", "/api/v1/tasks/{id}/complete"),
    ("get", "/api/v1/tasks/{id}/events"),
    ("post", "/api/v1/tasks/{id}/retry"),
    ("post", "/api/v1/tasks/{id}/signals"),
    ("post", "/api/v1/tasks/{id}/status"),
    ("post", "/api/v1/webhooks/forgejo"),
    ("get", "/healthz"),
    ("get", "/openapi.json"),
    ("get", "/readyz"),
];

/// The routes a pull agent's token opens, and the registration route; every other `/api/v1`
/// route takes the admin token.
const AGENT_ROUTES: &[&str] = &[
    "/api/v1/agents/deregister",
    "/api/v1/agents/heartbeat",
    "/api/v1/receipts",
    "/api/v1/tasks/dequeue",
    "/api/v1/tasks/{id}/complete",
    "/api/v1/tasks/{id}/status",
];
const REGISTER_ROUTE: &str = "/api/v1/agents/register";
/// Signed with the webhook secret, not a bearer token (checked in tests/forge_webhook.rs).
const WEBHOOK_ROUTE: &str = "/api/v1/webhooks/forgejo";

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A router without engine (handlers answer 503 after the layers) but with an admin token.
fn bare_router() -> axum::Router {
    let state = AppState::with(
        Arc::new(Config::default()),
        Some(TOKEN.to_string()),
        PathBuf::from("."),
        None,
    );
    api::router(state)
}

async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
        .uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The document as the router serves it.
async fn served_document(router: &axum::Router) -> Value {
    let (status, doc) = call(router, "get", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

/// (method, path) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(*method).is_some() {
                out.insert((method.to_string(), path.clone()));
            }
        }
    }
    out
}

/// Every `"$ref"` string anywhere in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The router's own "no such route" and "wrong method" answers (not a handler's 404).
fn is_router_fallback(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::METHOD_NOT_ALLOWED
        || (status == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route")
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_with_unique_operation_ids_and_resolving_references() {
    let doc = served_document(&bare_router()).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{doc}"
    );
    let meta: Value = serde_json::from_str(OAS_31_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&meta).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not OpenAPI 3.1:\n{}", errors.join("\n"));
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        assert!(
            jsonschema::meta::is_valid(schema),
            "schema {name} is not a valid JSON Schema: {schema}"
        );
    }
    let ids: Vec<&str> = operations(&doc)
        .iter()
        .map(|(m, p)| doc["paths"][p][m]["operationId"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "operation ids must be unique: {ids:?}"
    );
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let router = bare_router();
    let doc = served_document(&router).await;
    let documented = operations(&doc);
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, expected);
    for path in doc["paths"].as_object().unwrap().keys() {
        let uri = path.replace("{id}", "1");
        for method in METHODS {
            let (status, body) = call(&router, method, &uri, Some(TOKEN)).await;
            if documented.contains(&(method.to_string(), path.clone())) {
                assert!(
                    !is_router_fallback(status, &body),
                    "{method} {uri} is documented but not served: {status} {body}"
                );
            } else if *method != "head" {
                // axum answers HEAD with the GET handler; any other method must be refused.
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is served but not documented: {body}"
                );
            }
        }
    }
}

/// axum cannot list the routes a router serves, so the other half of "exactly" is kept by
/// construction: every route goes through `OpenApiRouter::routes(routes!(…))`. This test
/// refuses the ways around it in the API's source (`.route(`, `.route_service(`,
/// `.nest_service(`, `axum::routing`).
#[test]
fn no_api_module_serves_a_route_outside_the_document() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if [
                ".route(",
                ".route_service(",
                ".nest_service(",
                "axum::routing",
            ]
            .iter()
            .any(|p| code.contains(p))
            {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes registered without their documentation (use OpenApiRouter::routes(routes!(…)), \
         see src/api/mod.rs):\n{}",
        offenders.join("\n")
    );
}

#[tokio::test]
async fn every_api_v1_route_asks_for_its_token_as_documented_and_no_other_route_does() {
    let router = bare_router();
    let doc = served_document(&router).await;
    for scheme in ["admin_token", "agent_token", "registration_token"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme],
            json!({ "type": "http", "scheme": "bearer" }),
            "{scheme}"
        );
    }
    for (method, path) in operations(&doc) {
        let op = &doc["paths"][&path][&method];
        let uri = path.replace("{id}", "1");
        let (status, body) = call(&router, &method, &uri, None).await;
        if !path.starts_with("/api/v1/") || path == WEBHOOK_ROUTE {
            assert!(op.get("security").is_none(), "{path}");
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
            continue;
        }
        let security = if AGENT_ROUTES.contains(&path.as_str()) {
            json!([{ "agent_token": [] }])
        } else if path == REGISTER_ROUTE {
            json!([{ "admin_token": [] }, { "registration_token": [] }])
        } else {
            json!([{ "admin_token": [] }])
        };
        assert_eq!(op["security"], security, "{method} {path}");
        assert_eq!(
            op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{method} {path}"
        );
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        if AGENT_ROUTES.contains(&path.as_str()) {
            // The agent guard looks a given token up on the pull board, which this bare router
            // lacks; the real daemon's answers to agent tokens are checked in tests/pull.rs.
            continue;
        }
        let (status, _) = call(&router, &method, &uri, Some("wrong")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let (status, _) = call(&router, &method, &uri, Some(TOKEN)).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

#[tokio::test]
async fn every_documented_error_answer_has_the_error_shape() {
    let doc = served_document(&bare_router()).await;
    for (method, path) in operations(&doc) {
        let responses = doc["paths"][&path][&method]["responses"]
            .as_object()
            .unwrap();
        for (status, response) in responses {
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                assert_eq!(
                    schema, "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    assert_eq!(
        doc["components"]["schemas"]["ErrorBody"]["required"],
        json!(["error"])
    );
    assert_eq!(
        doc["components"]["schemas"]["ErrorDetail"]["required"],
        json!(["code", "message"])
    );
}

// ---------------------------------------------------------------------------------------------
// The real daemon's answers against the document it serves

/// The document of a running daemon, and checks of its answers against it.
struct Contract {
    doc: Value,
}

impl Contract {
    async fn of(fleet: &Fleet) -> Contract {
        let r = fleet
            .http
            .get(format!("{}/openapi.json", fleet.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        Contract {
            doc: r.json().await.unwrap(),
        }
    }

    /// Panics unless `path`'s `method` documents `status` with a JSON schema that `body` meets.
    fn check(&self, method: &str, path: &str, status: u16, body: &Value) {
        let response = &self.doc["paths"][path][method]["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path} answered {status}, which it does not document: {body}"
        );
        let mut root = response["content"]["application/json"]["schema"].clone();
        let Some(object) = root.as_object_mut() else {
            panic!("{method} {path} {status}: no JSON schema");
        };
        object.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        object.insert("components".into(), self.doc["components"].clone());
        let validator = jsonschema::validator_for(&root).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status}: the body does not match the document:\n{}\n{body:#}",
            errors.join("\n")
        );
    }
}

/// Sends a request to the daemon; returns the status and the JSON body.
async fn send(
    fleet: &Fleet,
    method: &str,
    uri: &str,
    body: Option<Value>,
    token: bool,
) -> (u16, Value) {
    let mut r = fleet.http.request(
        Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
        format!("{}{uri}", fleet.url),
    );
    if token {
        r = r.bearer_auth(TOKEN);
    }
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_daemons_answers_match_the_document_it_serves() {
    let fleet = Fleet::start(Setup::default()).await;
    let c = Contract::of(&fleet).await;
    let check = |method: &str, path: &str, (status, body): &(u16, Value)| {
        c.check(method, path, *status, body);
    };

    // Submit (201, then 200 for the same key), a task that completes, one that fails.
    let new = json!({ "title": "Greet", "body": "Say hello.", "idempotency_key": "k-1",
                      "labels": ["a"], "priority": "high", "type": "feature" });
    let created = send(&fleet, "post", "/api/v1/tasks", Some(new.clone()), true).await;
    assert_eq!(created.0, 201, "{}", created.1);
    check("post", "/api/v1/tasks", &created);
    let again = send(&fleet, "post", "/api/v1/tasks", Some(new), true).await;
    assert_eq!(again.0, 200, "{}", again.1);
    check("post", "/api/v1/tasks", &again);
    let done = created.1["id"].as_str().unwrap().to_string();
    let failing = fleet.submit("Fail", "demo-agent: fail\n").await;
    let slow = fleet.submit("Slow", "demo-agent: sleep 30\n").await;

    // A completed task: runs, receipt and events filled in.
    fleet.wait_status(&done, "completed", T).await;
    let shown = send(&fleet, "get", &format!("/api/v1/tasks/{done}"), None, true).await;
    assert_eq!(shown.0, 200);
    assert!(
        shown.1["receipt"]["commits"][0]["sha"].is_string(),
        "{}",
        shown.1
    );
    check("get", "/api/v1/tasks/{id}", &shown);
    let events = send(
        &fleet,
        "get",
        &format!("/api/v1/tasks/{done}/events?after=1"),
        None,
        true,
    )
    .await;
    assert_eq!(events.0, 200);
    check("get", "/api/v1/tasks/{id}/events", &events);

    // Lists: all tasks, and a page with a `next_after`.
    let list = send(&fleet, "get", "/api/v1/tasks", None, true).await;
    assert_eq!(list.0, 200);
    assert_eq!(list.1["tasks"].as_array().unwrap().len(), 3);
    check("get", "/api/v1/tasks", &list);
    let page = send(&fleet, "get", "/api/v1/tasks?limit=1", None, true).await;
    assert!(page.1["next_after"].is_string(), "{}", page.1);
    check("get", "/api/v1/tasks", &page);

    // A failed task is retried (202); a completed one cannot be (409).
    fleet.wait_status(&failing, "failed", T).await;
    let retried = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{failing}/retry"),
        None,
        true,
    )
    .await;
    assert_eq!(retried.0, 202, "{}", retried.1);
    check("post", "/api/v1/tasks/{id}/retry", &retried);
    let refused = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{done}/retry"),
        None,
        true,
    )
    .await;
    assert_eq!(refused.0, 409);
    check("post", "/api/v1/tasks/{id}/retry", &refused);

    // Signals and cancels.
    let note = json!({ "signal": { "type": "note", "text": "hi" }, "idempotency_key": "n-1" });
    let signalled = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{slow}/signals"),
        Some(note),
        true,
    )
    .await;
    assert_eq!(signalled.0, 202, "{}", signalled.1);
    check("post", "/api/v1/tasks/{id}/signals", &signalled);
    let unknown_signal = json!({ "signal": { "type": "dance" }, "idempotency_key": "n-2" });
    let bad = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{slow}/signals"),
        Some(unknown_signal),
        true,
    )
    .await;
    assert_eq!(bad.0, 422, "{}", bad.1);
    check("post", "/api/v1/tasks/{id}/signals", &bad);
    let cancelled = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{slow}/cancel"),
        Some(json!({ "reason": "enough" })),
        true,
    )
    .await;
    assert_eq!(cancelled.0, 202, "{}", cancelled.1);
    check("post", "/api/v1/tasks/{id}/cancel", &cancelled);
    fleet.wait_status(&slow, "cancelled", T).await;
    let cancelled_task = send(&fleet, "get", &format!("/api/v1/tasks/{slow}"), None, true).await;
    check("get", "/api/v1/tasks/{id}", &cancelled_task);
    let twice = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{slow}/cancel"),
        None,
        true,
    )
    .await;
    assert_eq!(twice.0, 409, "{}", twice.1);
    check("post", "/api/v1/tasks/{id}/cancel", &twice);

    // Hosts, once a health check has run.
    let hosts = send(&fleet, "get", "/api/v1/hosts", None, true).await;
    assert_eq!(hosts.0, 200);
    assert_eq!(hosts.1["hosts"][0]["health"], "online", "{}", hosts.1);
    check("get", "/api/v1/hosts", &hosts);

    // Errors.
    let unauthorized = send(&fleet, "get", "/api/v1/tasks", None, false).await;
    assert_eq!(unauthorized.0, 401);
    check("get", "/api/v1/tasks", &unauthorized);
    let missing = send(&fleet, "get", "/api/v1/tasks/999", None, true).await;
    assert_eq!(missing.0, 404);
    check("get", "/api/v1/tasks/{id}", &missing);
    let not_a_number = send(&fleet, "get", "/api/v1/tasks/abc/events", None, true).await;
    assert_eq!(not_a_number.0, 404);
    check("get", "/api/v1/tasks/{id}/events", &not_a_number);
    let bad_status = send(&fleet, "get", "/api/v1/tasks?status=bogus", None, true).await;
    assert_eq!(bad_status.0, 400);
    check("get", "/api/v1/tasks", &bad_status);
    let bad_limit = send(&fleet, "get", "/api/v1/tasks?limit=-1", None, true).await;
    assert_eq!(bad_limit.0, 400, "{}", bad_limit.1);
    check("get", "/api/v1/tasks", &bad_limit);
    let unknown_agent = json!({ "title": "x", "agent": "nope" });
    let refused = send(&fleet, "post", "/api/v1/tasks", Some(unknown_agent), true).await;
    assert_eq!(refused.0, 422);
    check("post", "/api/v1/tasks", &refused);
    let r = fleet
        .http
        .post(fleet.api("/tasks"))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    let not_json = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!(not_json.0, 415);
    check("post", "/api/v1/tasks", &not_json);
    let r = fleet
        .http
        .post(fleet.api(&format!("/tasks/{done}/cancel")))
        .bearer_auth(TOKEN)
        .body("{\"reason\": ")
        .send()
        .await
        .unwrap();
    let malformed = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!(malformed.0, 400);
    check("post", "/api/v1/tasks/{id}/cancel", &malformed);

    // The daemon's own routes.
    let health = send(&fleet, "get", "/healthz", None, false).await;
    check("get", "/healthz", &health);
    let ready = send(&fleet, "get", "/readyz", None, false).await;
    assert_eq!(ready.0, 200);
    check("get", "/readyz", &ready);
    let doc = send(&fleet, "get", "/openapi.json", None, false).await;
    check("get", "/openapi.json", &doc);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_documented_413_on_every_route_with_a_body() {
    let fleet = Fleet::start(Setup {
        body_limit: 1024,
        ..Setup::default()
    })
    .await;
    let c = Contract::of(&fleet).await;
    let id = fleet.submit("Slow", "demo-agent: sleep 30\n").await;
    let big = json!({ "title": "x".repeat(4096) });
    for (path, uri) in [
        ("/api/v1/tasks", "/api/v1/tasks".to_string()),
        (
            "/api/v1/tasks/{id}/cancel",
            format!("/api/v1/tasks/{id}/cancel"),
        ),
        (
            "/api/v1/tasks/{id}/signals",
            format!("/api/v1/tasks/{id}/signals"),
        ),
    ] {
        let answer = send(&fleet, "post", &uri, Some(big.clone()), true).await;
        assert_eq!(answer.0, 413, "{uri}: {}", answer.1);
        assert_eq!(answer.1["error"]["code"], "payload_too_large");
        c.check("post", path, answer.0, &answer.1);
    }
}

#[tokio::test]
async fn documented_length_limits_are_the_ones_the_code_enforces() {
    let doc = served_document(&bare_router()).await;
    let schemas = &doc["components"]["schemas"];
    let max = agent_fleet::workflow::MAX_KEY_LEN;
    // A task's key is stored as `task/<key>`: 5 bytes of the engine's limit are taken.
    assert_eq!(
        schemas["NewTask"]["properties"]["idempotency_key"]["maxLength"],
        max - 5
    );
    assert_eq!(
        schemas["SignalRequest"]["properties"]["idempotency_key"]["maxLength"],
        max
    );
    assert_eq!(
        schemas["TaskStatusName"]["enum"],
        json!(agent_fleet::steps::task::TaskStatus::ALL.map(|s| s.as_str()))
    );
}

/// Sends a request with a pull agent's token.
async fn send_as(fleet: &Fleet, token: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = fleet
        .http
        .post(format!("{}{uri}", fleet.url))
        .bearer_auth(token);
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_pull_agent_routes_answer_what_the_document_says() {
    // A kind no host offers: its tasks are left to pull agents.
    let fleet = Fleet::start(Setup {
        extra: "[[agents]]\nname = \"remote\"\ncli_template = \"remote {prompt_file}\"\noutput_format = \"raw\"\n".into(),
        ..Setup::default()
    })
    .await;
    let c = Contract::of(&fleet).await;
    let check = |method: &str, path: &str, (status, body): &(u16, Value)| {
        c.check(method, path, *status, body);
    };
    let agent = json!({ "name": "a-1", "agent_kinds": ["remote"], "max_concurrent": 2 });
    let registered = send(
        &fleet,
        "post",
        "/api/v1/agents/register",
        Some(agent.clone()),
        true,
    )
    .await;
    assert_eq!(registered.0, 201, "{}", registered.1);
    check("post", "/api/v1/agents/register", &registered);
    let again = send(&fleet, "post", "/api/v1/agents/register", Some(agent), true).await;
    assert_eq!(again.0, 200, "{}", again.1);
    check("post", "/api/v1/agents/register", &again);
    let token = again.1["token"].as_str().unwrap().to_string();
    let bad = json!({ "name": "no spaces allowed", "agent_kinds": ["remote"] });
    let refused = send(&fleet, "post", "/api/v1/agents/register", Some(bad), true).await;
    assert_eq!(refused.0, 422);
    check("post", "/api/v1/agents/register", &refused);

    let nothing = send_as(&fleet, &token, "/api/v1/tasks/dequeue", None).await;
    assert_eq!(nothing.0, 204, "{}", nothing.1);
    assert!(c.doc["paths"]["/api/v1/tasks/dequeue"]["post"]["responses"]["204"].is_object());
    let (status, task) = fleet
        .post("/tasks", json!({ "title": "Pull me", "agent": "remote" }))
        .await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let mut dequeued = (0, Value::Null);
    for _ in 0..400 {
        dequeued = send_as(&fleet, &token, "/api/v1/tasks/dequeue", Some(json!({}))).await;
        if dequeued.0 != 204 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(dequeued.0, 200, "{}\n{}", dequeued.1, fleet.log());
    check("post", "/api/v1/tasks/dequeue", &dequeued);
    let epoch = dequeued.1["lease"]["epoch"].as_u64().unwrap();

    let heartbeat = send_as(&fleet, &token, "/api/v1/agents/heartbeat", None).await;
    assert_eq!(heartbeat.0, 200, "{}", heartbeat.1);
    check("post", "/api/v1/agents/heartbeat", &heartbeat);
    let agents = send(&fleet, "get", "/api/v1/agents?status=online", None, true).await;
    assert_eq!(agents.0, 200, "{}", agents.1);
    check("get", "/api/v1/agents", &agents);

    let running = json!({ "epoch": epoch, "status": "running", "message": "on it" });
    let status_uri = format!("/api/v1/tasks/{id}/status");
    let reported = send_as(&fleet, &token, &status_uri, Some(running)).await;
    assert_eq!(reported.0, 200, "{}", reported.1);
    check("post", "/api/v1/tasks/{id}/status", &reported);
    let stale = json!({ "epoch": epoch + 7, "status": "running" });
    let stale = send_as(&fleet, &token, &status_uri, Some(stale)).await;
    check("post", "/api/v1/tasks/{id}/status", &stale);
    let branch = fleet.branch(&id).await;
    let receipt = json!({ "task_id": id.parse::<u64>().unwrap(), "epoch": epoch,
                          "branch": branch, "commits": ["0123abcd"] });
    let receipt = send_as(&fleet, &token, "/api/v1/receipts", Some(receipt)).await;
    check("post", "/api/v1/receipts", &receipt);
    let done = json!({ "epoch": epoch, "summary": "done" });
    let completed = send_as(
        &fleet,
        &token,
        &format!("/api/v1/tasks/{id}/complete"),
        Some(done),
    )
    .await;
    check("post", "/api/v1/tasks/{id}/complete", &completed);

    let other = fleet.submit("Elsewhere", "").await;
    let pin = json!({ "host_id": "local" });
    let assigned = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{other}/assign"),
        Some(pin),
        true,
    )
    .await;
    check("post", "/api/v1/tasks/{id}/assign", &assigned);
    let both = json!({ "host_id": "local", "agent_id": 1 });
    let both = send(
        &fleet,
        "post",
        &format!("/api/v1/tasks/{other}/assign"),
        Some(both),
        true,
    )
    .await;
    assert_eq!(both.0, 422, "{}", both.1);
    check("post", "/api/v1/tasks/{id}/assign", &both);

    let gone = send_as(&fleet, &token, "/api/v1/agents/deregister", None).await;
    assert_eq!(gone.0, 200, "{}", gone.1);
    check("post", "/api/v1/agents/deregister", &gone);
    let after = send_as(&fleet, &token, "/api/v1/agents/heartbeat", None).await;
    assert_eq!(after.0, 401, "{}", after.1);
    check("post", "/api/v1/agents/heartbeat", &after);
}
