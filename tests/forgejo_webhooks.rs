//! Webhook verification and parsing against the reference Forgejo deliveries
//! (`tests/fixtures/reference/forgejo/webhooks/`: each `*.json` body byte for byte as Forgejo
//! sends it, and the `*.headers` it came with, signed with `webhook-secret-for-tests`).

use std::fs;
use std::path::PathBuf;

use agent_fleet::io::forgejo::webhook::{
    self, ForgeEvent, IssueInfo, PullInfo, RepoInfo, ReviewVerdict, WebhookError,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue};

const SECRET: &[u8] = b"webhook-secret-for-tests";

const PAYLOADS: [&str; 11] = [
    "issue_comment-created-on-pr",
    "issue_comment-created",
    "issues-labeled",
    "issues-opened",
    "issues-unlabeled",
    "pull_request-closed-merged",
    "pull_request-opened",
    "pull_request_review-approved",
    "pull_request_review-comment",
    "pull_request_review-rejected",
    "push-task-branch",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/forgejo/webhooks")
}

/// The body and headers of one reference delivery.
fn delivery(name: &str) -> (Vec<u8>, HeaderMap) {
    let body = fs::read(dir().join(format!("{name}.json"))).unwrap();
    let text = fs::read_to_string(dir().join(format!("{name}.headers"))).unwrap();
    let mut headers = HeaderMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(':').unwrap();
        headers.append(
            HeaderName::from_bytes(key.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    (body, headers)
}

/// The reference delivery parsed as its `X-Forgejo-Event-Type` says.
fn event(name: &str) -> ForgeEvent {
    let (body, headers) = delivery(name);
    let event_type = webhook::event_type(&headers).unwrap();
    webhook::parse(&event_type, &body).unwrap()
}

fn widgets() -> RepoInfo {
    RepoInfo {
        full_name: "acme/widgets".into(),
        clone_url: "https://forge.example.com/acme/widgets.git".into(),
        default_branch: "main".into(),
    }
}

fn pull_43(state: &str, merged: bool) -> PullInfo {
    PullInfo {
        number: 43,
        title: "Add rate limiting to the login endpoint (#42)".into(),
        state: state.into(),
        merged,
        head_ref: "task/42-login-rate-limit".into(),
        head_sha: "3f6a2c9e1b8d4f7a0c5e2b9d6f3a8c1e4b7d0a2f".into(),
        base_ref: "main".into(),
        html_url: "https://forge.example.com/acme/widgets/pulls/43".into(),
    }
}

#[test]
fn every_reference_delivery_verifies_with_its_signature() {
    for name in PAYLOADS {
        let (body, headers) = delivery(name);
        assert_eq!(webhook::verify(SECRET, &body, &headers), Ok(()), "{name}");
    }
}

#[test]
fn a_one_byte_change_of_the_body_is_a_bad_signature() {
    let (mut body, headers) = delivery("issues-opened");
    let i = body.len() / 2;
    body[i] ^= 0x01;
    assert_eq!(
        webhook::verify(SECRET, &body, &headers),
        Err(WebhookError::BadSignature)
    );
}

#[test]
fn another_secret_is_a_bad_signature() {
    let (body, headers) = delivery("push-task-branch");
    assert_eq!(
        webhook::verify(b"another-secret", &body, &headers),
        Err(WebhookError::BadSignature)
    );
}

#[test]
fn the_signature_is_accepted_under_x_gitea_signature_alone() {
    let (body, full) = delivery("pull_request-opened");
    let mut headers = HeaderMap::new();
    headers.insert(
        "X-Gitea-Signature",
        full.get("X-Gitea-Signature").unwrap().clone(),
    );
    assert_eq!(webhook::verify(SECRET, &body, &headers), Ok(()));
}

#[test]
fn no_signature_is_a_missing_signature() {
    let (body, mut headers) = delivery("issues-opened");
    for name in ["x-forgejo-signature", "x-gitea-signature"] {
        headers.remove(name);
    }
    assert_eq!(
        webhook::verify(SECRET, &body, &headers),
        Err(WebhookError::MissingSignature)
    );
}

#[test]
fn event_type_and_delivery_id_come_from_the_headers() {
    let (_, headers) = delivery("issues-labeled");
    assert_eq!(
        webhook::event_type(&headers).as_deref(),
        Some("issue_label")
    );
    assert_eq!(
        webhook::delivery_id(&headers).as_deref(),
        Some("6f1c2a52-3b8e-4d0f-9a7c-1e2d3f4a5b02")
    );
    let mut gitea_only = HeaderMap::new();
    gitea_only.insert("X-Gitea-Event-Type", "push".parse().unwrap());
    gitea_only.insert("X-Gitea-Delivery", "d-1".parse().unwrap());
    assert_eq!(webhook::event_type(&gitea_only).as_deref(), Some("push"));
    assert_eq!(webhook::delivery_id(&gitea_only).as_deref(), Some("d-1"));
    assert_eq!(webhook::event_type(&HeaderMap::new()), None);
}

#[test]
fn an_opened_issue_parses_with_its_labels() {
    assert_eq!(
        event("issues-opened"),
        ForgeEvent::Issue {
            action: "opened".into(),
            repo: widgets(),
            issue: IssueInfo {
                number: 42,
                title: "Add rate limiting to the login endpoint".into(),
                body:
                    "The login endpoint should reject more than 5 attempts per minute per IP.\n\n\
                       Acceptance criteria:\n- return HTTP 429 after the limit\n- add a unit test"
                        .into(),
                state: "open".into(),
                labels: vec!["agent:task".into()],
                is_pull: false,
                author: "alice".into(),
            },
        }
    );
}

#[test]
fn a_label_update_carries_the_full_label_set() {
    let ForgeEvent::Issue {
        action,
        repo,
        issue,
    } = event("issues-labeled")
    else {
        panic!("not an issue event");
    };
    assert_eq!(action, "label_updated");
    assert_eq!(repo.repo_ref().to_string(), "acme/widgets");
    assert_eq!(issue.number, 42);
    assert_eq!(issue.labels, ["agent:task", "agent:ready"]);

    // A removal is the same action with what is left.
    let ForgeEvent::Issue { action, issue, .. } = event("issues-unlabeled") else {
        panic!("not an issue event");
    };
    assert_eq!(action, "label_updated");
    assert_eq!(issue.labels, ["agent:task"]);
}

#[test]
fn a_merged_pull_request_is_closed_and_merged_with_its_head() {
    assert_eq!(
        event("pull_request-closed-merged"),
        ForgeEvent::PullRequest {
            action: "closed".into(),
            repo: widgets(),
            pull: pull_43("closed", true),
        }
    );
}

#[test]
fn an_opened_pull_request_is_not_merged() {
    assert_eq!(
        event("pull_request-opened"),
        ForgeEvent::PullRequest {
            action: "opened".into(),
            repo: widgets(),
            pull: pull_43("open", false),
        }
    );
}

#[test]
fn a_rejecting_review_carries_its_content_and_reviewer() {
    assert_eq!(
        event("pull_request_review-rejected"),
        ForgeEvent::Review {
            verdict: ReviewVerdict::Rejected,
            repo: widgets(),
            pull: pull_43("open", false),
            content:
                "The limiter is keyed on the X-Forwarded-For header, which clients can spoof. \
                      Please key on the peer address."
                    .into(),
            reviewer: "bob".into(),
        }
    );
}

#[test]
fn approving_and_commenting_reviews_have_their_verdicts() {
    let ForgeEvent::Review {
        verdict, reviewer, ..
    } = event("pull_request_review-approved")
    else {
        panic!("not a review");
    };
    assert_eq!(
        (verdict, reviewer.as_str()),
        (ReviewVerdict::Approved, "alice")
    );
    let ForgeEvent::Review { verdict, .. } = event("pull_request_review-comment") else {
        panic!("not a review");
    };
    assert_eq!(verdict, ReviewVerdict::Comment);
}

#[test]
fn a_push_carries_its_ref_and_new_head() {
    assert_eq!(
        event("push-task-branch"),
        ForgeEvent::Push {
            repo: widgets(),
            git_ref: "refs/heads/task/42-login-rate-limit".into(),
            before: "0000000000000000000000000000000000000000".into(),
            after: "3f6a2c9e1b8d4f7a0c5e2b9d6f3a8c1e4b7d0a2f".into(),
            commits: 2,
        }
    );
}

#[test]
fn a_comment_on_a_pull_request_is_a_pull_comment() {
    assert_eq!(
        event("issue_comment-created-on-pr"),
        ForgeEvent::Comment {
            repo: widgets(),
            issue_number: 43,
            is_pull: true,
            author: "alice".into(),
            body: "Looks close. Can you rename `RateLimiter::hit` to `check`?".into(),
        }
    );
}

#[test]
fn a_comment_on_an_issue_is_not_a_pull_comment() {
    let ForgeEvent::Comment {
        issue_number,
        is_pull,
        body,
        ..
    } = event("issue_comment-created")
    else {
        panic!("not a comment");
    };
    assert_eq!((issue_number, is_pull), (42, false));
    assert_eq!(
        body,
        "@agent-bot please also log rejected attempts at WARN level."
    );
}

#[test]
fn an_unknown_event_type_is_ignored() {
    let (body, _) = delivery("push-task-branch");
    assert_eq!(
        webhook::parse("repository", &body),
        Ok(ForgeEvent::Ignored {
            event_type: "repository".into()
        })
    );
    assert_eq!(
        webhook::parse("wiki", b"not even json"),
        Ok(ForgeEvent::Ignored {
            event_type: "wiki".into()
        })
    );
}

#[test]
fn truncated_json_is_malformed() {
    let (body, _) = delivery("issues-opened");
    let err = webhook::parse("issues", &body[..body.len() / 2]).unwrap_err();
    assert!(matches!(err, WebhookError::Malformed(_)), "{err:?}");
}
