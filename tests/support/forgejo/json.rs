//! The JSON the fake Forgejo answers and sends: REST objects (User, Repository, Label, Issue,
//! PullRequest, Comment, PullReview, PullReviewComment, Commit) and webhook payloads, all built by
//! patching the reference webhook payloads in `tests/fixtures/reference/forgejo/webhooks/`, so that
//! every object has exactly the keys Forgejo's structs marshal.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Value, json};

use super::git::CommitInfo;
use super::{Comment, Issue, Label, PullGit, Repo, Review, ReviewComment, ReviewKind};

macro_rules! reference {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference/forgejo/webhooks/",
            $name,
            ".json"
        ))
    };
}

struct Templates {
    issues: Value,
    comment: Value,
    comment_on_pr: Value,
    pull: Value,
    approved: Value,
    rejected: Value,
    review_comment: Value,
    push: Value,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a reference payload parses")
}

static T: LazyLock<Templates> = LazyLock::new(|| Templates {
    issues: parse(reference!("issues-labeled")),
    comment: parse(reference!("issue_comment-created")),
    comment_on_pr: parse(reference!("issue_comment-created-on-pr")),
    pull: parse(reference!("pull_request-closed-merged")),
    approved: parse(reference!("pull_request_review-approved")),
    rejected: parse(reference!("pull_request_review-rejected")),
    review_comment: parse(reference!("pull_request_review-comment")),
    push: parse(reference!("push-task-branch")),
});

/// Sets existing keys (and adds missing ones) of a JSON object.
fn patch<const N: usize>(mut obj: Value, pairs: [(&str, Value); N]) -> Value {
    if let Some(map) = obj.as_object_mut() {
        for (k, v) in pairs {
            map.insert(k.to_string(), v);
        }
    }
    obj
}

/// A `User` (the template's other fields, e.g. `created`, are kept).
pub fn user(base: &str, users: &BTreeMap<String, u64>, login: &str) -> Value {
    let id = users.get(login).copied().unwrap_or(0);
    let host = base.split("://").nth(1).unwrap_or(base);
    patch(
        T.issues["sender"].clone(),
        [
            ("id", json!(id)),
            ("login", json!(login)),
            ("full_name", json!(login)),
            ("email", json!(format!("{login}@noreply.{host}"))),
            ("avatar_url", json!(format!("{base}/avatars/{login}"))),
            ("html_url", json!(format!("{base}/{login}"))),
            ("username", json!(login)),
        ],
    )
}

/// Everything needed to render one repository's objects.
pub struct View<'a> {
    pub base: &'a str,
    pub users: &'a BTreeMap<String, u64>,
    /// Every repository (a fork's pull request shows the fork).
    pub repos: &'a BTreeMap<String, Repo>,
    pub repo: &'a Repo,
}

impl View<'_> {
    fn host(&self) -> &str {
        self.base.split("://").nth(1).unwrap_or(self.base)
    }

    fn full(&self) -> String {
        self.repo.full_name()
    }

    fn api(&self, rest: &str) -> String {
        format!("{}/api/v1/repos/{}{rest}", self.base, self.full())
    }

    fn html(&self, rest: &str) -> String {
        format!("{}/{}{rest}", self.base, self.full())
    }

    pub fn user(&self, login: &str) -> Value {
        user(self.base, self.users, login)
    }

    pub fn repository(&self) -> Value {
        let r = self.repo;
        let open = |pulls: bool| {
            r.issues
                .values()
                .filter(|i| !i.closed && i.pull.is_some() == pulls)
                .count()
        };
        patch(
            T.issues["repository"].clone(),
            [
                ("id", json!(r.id)),
                ("owner", self.user(&r.owner)),
                ("name", json!(r.name)),
                ("full_name", json!(self.full())),
                ("description", json!("")),
                ("size", json!(0)),
                ("language", json!("")),
                ("languages_url", json!(self.api("/languages"))),
                ("html_url", json!(self.html(""))),
                ("url", json!(self.api(""))),
                (
                    "ssh_url",
                    json!(format!("ssh://git@{}/{}.git", self.host(), self.full())),
                ),
                ("clone_url", json!(r.path.display().to_string())),
                ("watchers_count", json!(0)),
                ("open_issues_count", json!(open(false))),
                ("open_pr_counter", json!(open(true))),
                ("created_at", json!(r.created_at)),
                ("updated_at", json!(r.created_at)),
                ("fork", json!(r.fork_of.is_some())),
            ],
        )
    }

    pub fn label(&self, l: &Label) -> Value {
        patch(
            T.issues["issue"]["labels"][0].clone(),
            [
                ("id", json!(l.id)),
                ("name", json!(l.name)),
                ("exclusive", json!(l.exclusive)),
                ("color", json!(l.color)),
                ("description", json!(l.description)),
                ("url", json!(self.api(&format!("/labels/{}", l.id)))),
            ],
        )
    }

    fn labels(&self, ids: &[u64]) -> Value {
        let labels = ids
            .iter()
            .filter_map(|id| self.repo.labels.iter().find(|l| l.id == *id));
        Value::Array(labels.map(|l| self.label(l)).collect())
    }

    fn assignees(&self, issue: &Issue) -> Value {
        if issue.assignees.is_empty() {
            return Value::Null;
        }
        Value::Array(issue.assignees.iter().map(|a| self.user(a)).collect())
    }

    fn issue_html(&self, issue: &Issue) -> String {
        let kind = if issue.pull.is_some() {
            "pulls"
        } else {
            "issues"
        };
        self.html(&format!("/{kind}/{}", issue.number))
    }

    pub fn issue(&self, issue: &Issue) -> Value {
        let pull_meta = issue.pull.as_ref().map_or(Value::Null, |p| {
            json!({"merged": p.merged, "merged_at": p.merged_at, "draft": false, "html_url": self.issue_html(issue)})
        });
        let r = self.repo;
        patch(
            T.issues["issue"].clone(),
            [
                ("id", json!(issue.id)),
                ("url", json!(self.api(&format!("/issues/{}", issue.number)))),
                ("html_url", json!(self.issue_html(issue))),
                ("number", json!(issue.number)),
                ("user", self.user(&issue.author)),
                ("title", json!(issue.title)),
                ("body", json!(issue.body)),
                ("labels", self.labels(&issue.labels)),
                ("state", json!(state(issue.closed))),
                ("comments", json!(issue.comments.len())),
                ("created_at", json!(issue.created_at)),
                ("updated_at", json!(issue.updated_at)),
                ("closed_at", json!(issue.closed_at)),
                ("pull_request", pull_meta),
                // Forgejo: the first assignee (compatibility), and null rather than `[]`.
                (
                    "assignee",
                    issue
                        .assignees
                        .first()
                        .map_or(Value::Null, |a| self.user(a)),
                ),
                ("assignees", self.assignees(issue)),
                (
                    "repository",
                    json!({"id": r.id, "name": r.name, "owner": r.owner, "full_name": self.full()}),
                ),
            ],
        )
    }

    fn branch(&self, template: &Value, name: &str, sha: &str) -> Value {
        self.branch_in(template, name, sha, None)
    }

    /// A `PRBranchInfo`; `fork` names the repository of a head branch outside this one.
    fn branch_in(&self, template: &Value, name: &str, sha: &str, fork: Option<&str>) -> Value {
        let (repo_id, repo) = match fork.and_then(|f| self.repos.get(f)) {
            Some(r) => {
                let view = View {
                    base: self.base,
                    users: self.users,
                    repos: self.repos,
                    repo: r,
                };
                (r.id, view.repository())
            }
            None => (self.repo.id, self.repository()),
        };
        patch(
            template.clone(),
            [
                ("label", json!(name)),
                ("ref", json!(name)),
                ("sha", json!(sha)),
                ("repo_id", json!(repo_id)),
                ("repo", repo),
            ],
        )
    }

    pub fn pull(&self, issue: &Issue, git: &PullGit) -> Value {
        let Some(p) = &issue.pull else {
            return Value::Null;
        };
        let html = self.issue_html(issue);
        // After a merge whose head branch is gone, Forgejo shows the pull ref (NOTES.md).
        let head_ref = if git.head_branch_exists {
            p.head.clone()
        } else {
            format!("refs/pull/{}/head", issue.number)
        };
        let review_comments: usize = p.reviews.iter().map(|r| r.comments.len()).sum();
        let t = &T.pull["pull_request"];
        patch(
            t.clone(),
            [
                ("id", json!(p.id)),
                ("url", json!(html)),
                ("number", json!(issue.number)),
                ("user", self.user(&issue.author)),
                ("title", json!(issue.title)),
                ("body", json!(issue.body)),
                ("labels", self.labels(&issue.labels)),
                ("requested_reviewers", json!([])),
                ("state", json!(state(issue.closed))),
                ("comments", json!(issue.comments.len())),
                ("review_comments", json!(review_comments)),
                ("additions", json!(git.additions)),
                ("deletions", json!(git.deletions)),
                ("changed_files", json!(git.changed_files)),
                ("html_url", json!(html)),
                ("diff_url", json!(format!("{html}.diff"))),
                ("patch_url", json!(format!("{html}.patch"))),
                ("mergeable", json!(git.mergeable)),
                ("merged", json!(p.merged)),
                ("merged_at", json!(p.merged_at)),
                ("merge_commit_sha", json!(p.merge_commit)),
                (
                    "merged_by",
                    p.merged_by.as_deref().map_or(Value::Null, |u| self.user(u)),
                ),
                ("base", self.branch(&t["base"], &p.base, &git.base_sha)),
                (
                    "head",
                    self.branch_in(
                        &t["head"],
                        &head_ref,
                        &git.head_sha,
                        p.fork.as_ref().map(|(f, _)| f.as_str()),
                    ),
                ),
                ("merge_base", json!(p.merge_base)),
                ("created_at", json!(issue.created_at)),
                ("updated_at", json!(issue.updated_at)),
                ("closed_at", json!(issue.closed_at)),
            ],
        )
    }

    pub fn comment(&self, issue: &Issue, c: &Comment) -> Value {
        let html = self.issue_html(issue);
        let (issue_url, pull_url) = if issue.pull.is_some() {
            (String::new(), html.clone())
        } else {
            (html.clone(), String::new())
        };
        patch(
            T.comment["comment"].clone(),
            [
                ("id", json!(c.id)),
                ("html_url", json!(format!("{html}#issuecomment-{}", c.id))),
                ("pull_request_url", json!(pull_url)),
                ("issue_url", json!(issue_url)),
                ("user", self.user(&c.author)),
                ("body", json!(c.body)),
                ("created_at", json!(c.created_at)),
                ("updated_at", json!(c.created_at)),
            ],
        )
    }

    pub fn review(&self, issue: &Issue, r: &Review) -> Value {
        let html = self.issue_html(issue);
        let state = match r.kind {
            ReviewKind::Approve => "APPROVED",
            ReviewKind::RequestChanges => "REQUEST_CHANGES",
            ReviewKind::Comment => "COMMENT",
        };
        json!({
            "id": r.id, "user": self.user(&r.reviewer), "team": null, "state": state, "body": r.body,
            "commit_id": r.commit_id, "stale": false, "official": r.official, "dismissed": false,
            "comments_count": r.comments.len(), "submitted_at": r.submitted_at, "updated_at": r.submitted_at,
            "html_url": format!("{html}#issuecomment-{}", r.id), "pull_request_url": html,
        })
    }

    pub fn review_comment(&self, issue: &Issue, r: &Review, c: &ReviewComment) -> Value {
        let html = self.issue_html(issue);
        // convert.ToPullReviewComment: a new-side line is `position`, an old-side one `original_position`.
        json!({
            "id": c.id, "body": c.body, "user": self.user(&r.reviewer), "resolver": null,
            "pull_request_review_id": r.id, "created_at": c.created_at, "updated_at": c.created_at,
            "path": c.path, "commit_id": c.commit_id, "original_commit_id": c.commit_id,
            "diff_hunk": c.diff_hunk, "position": c.line, "original_position": 0,
            "html_url": format!("{html}#issuecomment-{}", c.id), "pull_request_url": html,
        })
    }

    /// The API `Commit` (swagger definition). Line stats are not computed (zeros).
    pub fn commit(&self, c: &CommitInfo) -> Value {
        let commit_url = |sha: &str| self.api(&format!("/git/commits/{sha}"));
        let person = |name: &str, email: &str, date: &str| json!({"name": name, "email": email, "date": date});
        let status = |s: char| match s {
            'A' => "added",
            'D' => "removed",
            'R' => "renamed",
            _ => "modified",
        };
        json!({
            "url": commit_url(&c.sha), "sha": c.sha, "created": c.committer_date,
            "html_url": self.html(&format!("/commit/{}", c.sha)),
            "commit": {
                "url": commit_url(&c.sha),
                "author": person(&c.author_name, &c.author_email, &c.author_date),
                "committer": person(&c.committer_name, &c.committer_email, &c.committer_date),
                "message": c.message,
                "tree": {"url": self.api(&format!("/git/trees/{}", c.tree)), "sha": c.tree, "created": c.committer_date},
                "verification": {"verified": false, "reason": "gpg.error.not_signed_commit", "signature": "", "signer": null, "payload": ""},
            },
            "author": null, "committer": null,
            "parents": c.parents.iter().map(|p| json!({"url": commit_url(p), "sha": p})).collect::<Vec<_>>(),
            "files": c.files.iter().map(|(s, f)| json!({"filename": f, "status": status(*s)})).collect::<Vec<_>>(),
            "stats": {"total": 0, "additions": 0, "deletions": 0},
        })
    }

    fn payload_commit(&self, c: &CommitInfo) -> Value {
        let files = |want: char| {
            c.files
                .iter()
                .filter(|(s, _)| *s == want)
                .map(|(_, f)| f.clone())
                .collect::<Vec<_>>()
        };
        let modified: Vec<String> = c
            .files
            .iter()
            .filter(|(s, _)| !matches!(s, 'A' | 'D'))
            .map(|(_, f)| f.clone())
            .collect();
        patch(
            T.push["commits"][0].clone(),
            [
                ("id", json!(c.sha)),
                ("message", json!(c.message)),
                ("url", json!(self.html(&format!("/commit/{}", c.sha)))),
                (
                    "author",
                    json!({"name": c.author_name, "email": c.author_email, "username": ""}),
                ),
                (
                    "committer",
                    json!({"name": c.committer_name, "email": c.committer_email, "username": ""}),
                ),
                ("timestamp", json!(c.author_date)),
                ("added", json!(files('A'))),
                ("removed", json!(files('D'))),
                ("modified", json!(modified)),
            ],
        )
    }

    // ---- webhook payloads ----

    pub fn issue_payload(&self, issue: &Issue, action: &str, sender: &str) -> Value {
        patch(
            T.issues.clone(),
            [
                ("action", json!(action)),
                ("number", json!(issue.number)),
                ("issue", self.issue(issue)),
                ("repository", self.repository()),
                ("sender", self.user(sender)),
            ],
        )
    }

    pub fn comment_payload(
        &self,
        issue: &Issue,
        c: &Comment,
        git: &PullGit,
        sender: &str,
    ) -> Value {
        let template = if issue.pull.is_some() {
            &T.comment_on_pr
        } else {
            &T.comment
        };
        let mut payload = patch(
            template.clone(),
            [
                ("action", json!("created")),
                ("issue", self.issue(issue)),
                ("comment", self.comment(issue, c)),
                ("repository", self.repository()),
                ("sender", self.user(sender)),
                ("is_pull", json!(issue.pull.is_some())),
            ],
        );
        if issue.pull.is_some() {
            payload = patch(payload, [("pull_request", self.pull(issue, git))]);
        }
        payload
    }

    pub fn pull_payload(&self, issue: &Issue, git: &PullGit, action: &str, sender: &str) -> Value {
        patch(
            T.pull.clone(),
            [
                ("action", json!(action)),
                ("number", json!(issue.number)),
                ("pull_request", self.pull(issue, git)),
                ("requested_reviewer", Value::Null),
                ("repository", self.repository()),
                ("sender", self.user(sender)),
                ("commit_id", json!("")),
                ("review", Value::Null),
            ],
        )
    }

    /// `review` carries only the type and the body (NOTES.md); reviewer = sender.
    pub fn review_payload(&self, issue: &Issue, git: &PullGit, r: &Review) -> Value {
        let (template, kind) = match r.kind {
            ReviewKind::Approve => (&T.approved, "pull_request_review_approved"),
            ReviewKind::RequestChanges => (&T.rejected, "pull_request_review_rejected"),
            ReviewKind::Comment => (&T.review_comment, "pull_request_review_comment"),
        };
        let commit_id = if template["commit_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            r.commit_id.clone()
        } else {
            String::new()
        };
        patch(
            template.clone(),
            [
                ("action", json!("reviewed")),
                ("number", json!(issue.number)),
                ("pull_request", self.pull(issue, git)),
                ("requested_reviewer", self.user(&r.reviewer)),
                ("repository", self.repository()),
                ("sender", self.user(&r.reviewer)),
                ("commit_id", json!(commit_id)),
                ("review", json!({"type": kind, "content": r.body})),
            ],
        )
    }

    /// At most 5 commits are listed (Forgejo's `UI.FEED_MAX_COMMIT_NUM` default; ASSUMPTION that
    /// webhooks use it too), `total_commits` counts all.
    pub fn push_payload(
        &self,
        refname: &str,
        before: &str,
        after: &str,
        commits: &[CommitInfo],
        pusher: &str,
    ) -> Value {
        let listed: Vec<Value> = commits
            .iter()
            .take(5)
            .map(|c| self.payload_commit(c))
            .collect();
        let head = commits
            .first()
            .map_or(Value::Null, |c| self.payload_commit(c));
        patch(
            T.push.clone(),
            [
                ("ref", json!(refname)),
                ("before", json!(before)),
                ("after", json!(after)),
                (
                    "compare_url",
                    json!(self.html(&format!("/compare/{before}...{after}"))),
                ),
                ("commits", Value::Array(listed)),
                ("total_commits", json!(commits.len())),
                ("head_commit", head),
                ("repository", self.repository()),
                ("pusher", self.user(pusher)),
                ("sender", self.user(pusher)),
            ],
        )
    }
}

fn state(closed: bool) -> &'static str {
    if closed { "closed" } else { "open" }
}
