//! The fake Forgejo's REST API: one axum fallback handler that records the request, validates it
//! against the swagger document (route, token, path/query types, JSON body) and dispatches on the
//! matched path template. Misfits are answered like Forgejo answers them (404 / 405 / 401 / 422
//! with its JSON error shapes) and recorded as violations; answers the fake produces are checked
//! against the spec's response schemas too (a mismatch is a violation prefixed `FAKE:`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::swagger::{Failure, Matched};
use super::{BOT, Inner, Label, NewPull, State as Forge, git, json as shapes};

pub fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

struct Req {
    method: String,
    path: String,
    query: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    fn empty(status: u16) -> Answer {
        Answer {
            status,
            body: None,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: String) -> Answer {
        self.headers.push((name.to_string(), value));
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = match self.body {
            Some(v) => (status, axum::Json(v)).into_response(),
            None => status.into_response(),
        };
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                resp.headers_mut().insert(k, v);
            }
        }
        resp
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let req = Req {
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: body.to_vec(),
    };
    let latency = inner.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match tokio::task::spawn_blocking(move || inner.serve(&req)).await {
        Ok(answer) => answer.into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("fake forgejo panicked: {e}"),
        )
            .into_response(),
    }
}

/// A matched request on its way to a handler.
struct Call<'a> {
    inner: &'a Inner,
    req: &'a Req,
    params: HashMap<String, String>,
    query: Vec<(String, String)>,
    body: Value,
}

type Handled = Result<Answer, Answer>;

impl Inner {
    fn serve(&self, req: &Req) -> Answer {
        let shown = if req.query.is_empty() {
            req.path.clone()
        } else {
            format!("{}?{}", req.path, req.query)
        };
        self.lock().requests.push((req.method.clone(), shown));
        let fail = |answer: Answer, reason: &str| {
            self.violation(&req.method, &req.path, reason);
            answer
        };
        let Some(rest) = req.path.strip_prefix(self.spec.base_path()) else {
            return fail(self.not_found(), "not under the API base path /api/v1");
        };
        let matched = match self.spec.route(&req.method, rest) {
            Ok(m) => m,
            Err(Failure::MethodNotAllowed) => {
                // ASSUMPTION: chi's default 405 (empty body) for a known path with another method.
                return fail(
                    Answer::empty(405),
                    "no such method for this path in the swagger spec",
                );
            }
            Err(_) => return fail(self.not_found(), "no route in the swagger spec"),
        };
        if let Err(reason) = self.authorize(req) {
            return fail(self.error(401, "token is required"), &reason);
        }
        if let Err(Failure::BadPathParam(reason)) = self.spec.check_path(&matched) {
            return fail(self.not_found(), &reason);
        }
        let mut query: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
            .into_owned()
            .collect();
        for (name, failure) in self.spec.check_query(&matched, &query) {
            match failure {
                Failure::MissingQuery(reason) => return fail(self.error(422, &reason), &reason),
                // Forgejo's FormInt/FormString fall back to the default: answer as if absent.
                Failure::BadQuery(reason)
                | Failure::BadPathParam(reason)
                | Failure::BadBody(reason) => {
                    self.violation(&req.method, &req.path, &reason);
                    query.retain(|(k, _)| *k != name);
                }
                Failure::NoRoute | Failure::MethodNotAllowed => {}
            }
        }
        if let Err(Failure::BadBody(reason)) =
            self.spec
                .check_body(&matched, req.content_type.as_deref(), &req.body)
        {
            return fail(self.error(422, &reason), &reason);
        }
        let body = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let call = Call {
            inner: self,
            req,
            params: matched.params.clone(),
            query,
            body,
        };
        let fault = self.take_fault(&req.method, &matched.template);
        let injected = |status: u16| {
            self.error(
                status,
                &format!("fault injected by the test on {}", matched.template),
            )
        };
        if let Some(f) = fault.as_ref().filter(|f| !f.after_acting) {
            return injected(f.status);
        }
        if let Some(slow) = self.slowness(&req.method, &matched.template) {
            std::thread::sleep(slow); // on the blocking pool, like a busy database
        }
        let answer = call.dispatch(&matched.template).unwrap_or_else(|a| a);
        self.check_answer(req, &matched, &answer);
        match fault {
            Some(f) => injected(f.status),
            None => answer,
        }
    }

    /// `Authorization: token <T>` or `bearer <T>` (scheme case-insensitive, services/auth/oauth2.go).
    /// Stricter than Forgejo for anonymous reads of public repositories: the daemon must always
    /// authenticate.
    fn authorize(&self, req: &Req) -> Result<(), String> {
        let header = req
            .authorization
            .as_deref()
            .ok_or("no Authorization header")?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or("Authorization header without a scheme")?;
        if !scheme.eq_ignore_ascii_case("token") && !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "Authorization scheme {scheme:?} (want token or bearer)"
            ));
        }
        if token.trim() != self.token {
            return Err("wrong token".into());
        }
        Ok(())
    }

    /// A 500 is not checked: Forgejo documents none of its internal errors (`ctx.Error(500…)`).
    fn check_answer(&self, req: &Req, matched: &Matched, answer: &Answer) {
        if answer.status == 500 {
            return;
        }
        if let Some(body) = &answer.body
            && let Err(e) = self.spec.check_response(matched, answer.status, body)
        {
            self.violation(
                &req.method,
                &req.path,
                &format!("FAKE: answer does not fit the spec: {e}"),
            );
        }
    }

    fn swagger_url(&self) -> String {
        format!("{}/api/swagger", self.base)
    }

    /// APIError (`ctx.Error`).
    fn error(&self, status: u16, message: &str) -> Answer {
        Answer::json(
            status,
            json!({"message": message, "url": self.swagger_url()}),
        )
    }

    /// APINotFound (`ctx.NotFound()`).
    fn not_found(&self) -> Answer {
        Answer::json(
            404,
            json!({"errors": [], "message": "The target couldn't be found.", "url": self.swagger_url()}),
        )
    }
}

/// Forgejo's `GetListOptions`: page from 1, limit 30 by default and at most 50
/// (`API.DEFAULT_PAGING_NUM`, `API.MAX_RESPONSE_ITEMS`).
fn page_and_limit(query: &[(String, String)]) -> (usize, usize) {
    let get = |k: &str| {
        query
            .iter()
            .find(|(q, _)| q == k)
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let page = get("page").max(1) as usize;
    let limit = match get("limit") {
        l if l <= 0 => 30,
        l => l.min(50) as usize,
    };
    (page, limit)
}

impl Call<'_> {
    fn dispatch(&self, template: &str) -> Handled {
        let t = template
            .strip_prefix("/repos/{owner}/{repo}")
            .unwrap_or(template);
        let repo_scoped = template.starts_with("/repos/{owner}/{repo}");
        match (self.req.method.as_str(), t, repo_scoped) {
            ("GET", "/user", false) => Ok(Answer::json(
                200,
                shapes::user(&self.inner.base, &self.inner.lock().users, BOT),
            )),
            ("GET", "/version", false) => Ok(Answer::json(200, json!({"version": "12.0.0-dev"}))),
            ("GET", "", true) => self.get_repo(),
            ("GET", "/issues", true) => self.list_issues(),
            ("GET", "/issues/{index}", true) => self.get_issue(),
            ("PATCH", "/issues/{index}", true) => self.edit_issue(),
            ("GET", "/labels", true) => self.list_labels(),
            ("POST", "/labels", true) => self.create_label(),
            ("GET", "/issues/{index}/labels", true) => self.issue_labels(),
            ("POST", "/issues/{index}/labels", true) => self.set_issue_labels(false),
            ("PUT", "/issues/{index}/labels", true) => self.set_issue_labels(true),
            ("DELETE", "/issues/{index}/labels/{id}", true) => self.remove_issue_label(),
            ("GET", "/issues/{index}/comments", true) => self.list_comments(),
            ("POST", "/issues/{index}/comments", true) => self.create_comment(),
            ("GET", "/pulls", true) => self.list_pulls(),
            ("POST", "/pulls", true) => self.create_pull(),
            ("GET", "/pulls/{index}", true) => self.get_pull(),
            ("GET", "/pulls/{base}/{head}", true) => self.pull_by_base_head(),
            ("GET", "/pulls/{index}/commits", true) => self.pull_commits(),
            ("GET", "/pulls/{index}/reviews", true) => self.list_reviews(),
            ("GET", "/pulls/{index}/reviews/{id}/comments", true) => self.review_comments(),
            ("GET", "/compare/{basehead}", true) => self.compare(),
            ("GET", "/collaborators/{collaborator}/permission", true) => self.permission(),
            ("GET", "/assignees", true) => self.assignees(),
            ("GET", "/hooks", true) => Ok(Answer::json(200, json!([]))),
            ("POST", "/hooks", true) => self.create_hook(),
            _ => {
                let reason = format!("{template} is in the spec but not implemented by the fake");
                self.inner
                    .violation(&self.req.method, &self.req.path, &reason);
                Err(self.inner.error(500, &reason))
            }
        }
    }

    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn int_param(&self, name: &str) -> i64 {
        self.params
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn index(&self) -> u64 {
        self.int_param("index").max(0) as u64
    }

    /// The repository's key; owner and name match case-insensitively, like Forgejo.
    fn repo_key(&self, st: &Forge) -> Result<String, Answer> {
        let owner = self.params.get("owner").map(String::as_str).unwrap_or("");
        let name = self.params.get("repo").map(String::as_str).unwrap_or("");
        let want = format!("{owner}/{name}");
        st.repos
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&want))
            .cloned()
            .ok_or_else(|| self.inner.not_found())
    }

    fn not_found(&self) -> Answer {
        self.inner.not_found()
    }

    /// A paginated list answer with `X-Total-Count` and `Link`.
    fn page_of(&self, items: Vec<Value>) -> Answer {
        let (page, limit) = page_and_limit(&self.query);
        let total = items.len();
        let shown: Vec<Value> = items
            .into_iter()
            .skip((page - 1) * limit)
            .take(limit)
            .collect();
        Answer::json(200, Value::Array(shown))
            .header("X-Total-Count", total.to_string())
            .header("Link", self.link(page, limit, total))
            .header(
                "Access-Control-Expose-Headers",
                "X-Total-Count, Link".into(),
            )
    }

    /// `ctx.SetLinkHeader`: next, last, first, prev; the query re-encoded with keys sorted.
    fn link(&self, page: usize, limit: usize, total: usize) -> String {
        let pages = total.div_ceil(limit).max(1);
        let url = |p: usize| {
            let mut pairs: Vec<(String, String)> = self
                .query
                .iter()
                .filter(|(k, _)| k != "page")
                .cloned()
                .collect();
            pairs.push(("page".into(), p.to_string()));
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            format!("<{}{}?{encoded}>", self.inner.base, self.req.path)
        };
        let mut links = Vec::new();
        if page < pages {
            links.push(format!("{}; rel=\"next\"", url(page + 1)));
            links.push(format!("{}; rel=\"last\"", url(pages)));
        }
        if page > 1 {
            links.push(format!("{}; rel=\"first\"", url(1)));
            links.push(format!("{}; rel=\"prev\"", url(page - 1)));
        }
        links.join(",")
    }

    // ---- repositories and issues ----

    fn get_repo(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        Ok(Answer::json(200, self.inner.view(&st, r).repository()))
    }

    /// ListIssues: `state` open (default) / closed / all; `type`; `labels` = names, an issue must
    /// have ALL of them (one indexer condition per label). Unknown names are discarded, and when
    /// none is known there is NO label filter at all (Forgejo quirk). Newest first.
    fn list_issues(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let state = self.q("state").unwrap_or("open");
        let kind = self.q("type");
        let wanted: Vec<u64> = self
            .q("labels")
            .unwrap_or("")
            .split(',')
            .filter_map(|name| r.labels.iter().find(|l| l.name == name).map(|l| l.id))
            .collect();
        let view = self.inner.view(&st, r);
        let items = r
            .issues
            .values()
            .rev()
            .filter(|i| match state {
                "closed" => i.closed,
                "all" => true,
                _ => !i.closed,
            })
            .filter(|i| match kind {
                Some("pulls") => i.pull.is_some(),
                Some("issues") => i.pull.is_none(),
                _ => true,
            })
            .filter(|i| wanted.iter().all(|l| i.labels.contains(l)))
            .map(|i| view.issue(i))
            .collect();
        Ok(self.page_of(items))
    }

    fn get_issue(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = r
            .issues
            .get(&self.index())
            .ok_or_else(|| self.not_found())?;
        Ok(Answer::json(200, self.inner.view(&st, r).issue(issue)))
    }

    /// EditIssue: `assignees` / `assignee` (replace the set; `[]` clears it) and `state`
    /// (close/reopen) are applied, by the token's user; 201 like Forgejo. A login that is no
    /// user, or a user who cannot be assigned (no write access), fails `UpdateAssignees`: Forgejo
    /// answers 500 with the message hidden (production mode) and changes nothing.
    fn edit_issue(&self) -> Handled {
        let key = self.repo_key(&self.inner.lock())?;
        let n = self.index();
        let list = self.body.get("assignees").filter(|v| !v.is_null());
        let one = self.body.get("assignee").filter(|v| !v.is_null());
        if list.is_some() || one.is_some() {
            let mut logins: Vec<String> = list
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(one) = one.and_then(Value::as_str).filter(|o| !o.is_empty()) {
                logins.push(one.to_string());
            }
            let mut st = self.inner.lock();
            if !st.repos[&key].issues.contains_key(&n) {
                return Err(self.not_found());
            }
            if let Err(e) = self.inner.set_assignees(&mut st, &key, n, &logins, BOT) {
                eprintln!("fake forgejo: UpdateAssignees: {e}");
                return Err(self.inner.error(500, ""));
            }
        }
        let closed = {
            let st = self.inner.lock();
            st.repos[&key]
                .issues
                .get(&n)
                .ok_or_else(|| self.not_found())?
                .closed
        };
        if self.body["state"] == "closed" && !closed {
            self.inner
                .close_issue(&key, n, BOT)
                .map_err(|e| self.inner.error(500, &e))?;
        } else if self.body["state"] == "open" && closed {
            self.inner
                .reopen_issue(&key, n, BOT)
                .map_err(|e| self.inner.error(500, &e))?;
        }
        let st = self.inner.lock();
        let r = &st.repos[&key];
        Ok(Answer::json(
            201,
            self.inner.view(&st, r).issue(&r.issues[&n]),
        ))
    }

    /// GetAssignees: the users with write access who can be assigned, by name.
    fn assignees(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let mut logins: Vec<&String> = st.users.keys().filter(|u| r.can_write(u)).collect();
        logins.sort();
        let view = self.inner.view(&st, r);
        let users = logins.into_iter().map(|u| view.user(u)).collect();
        Ok(Answer::json(200, Value::Array(users)))
    }

    // ---- labels ----

    fn list_labels(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let mut labels: Vec<&Label> = r.labels.iter().collect();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let view = self.inner.view(&st, r);
        Ok(self.page_of(labels.into_iter().map(|l| view.label(l)).collect()))
    }

    /// CreateLabel: the color must match `^#?([0-9a-f]{6}|[0-9a-f]{3})$` (a 6-digit one may lack
    /// the `#`), else 422. Forgejo does NOT refuse a duplicate name: a second label is created.
    fn create_label(&self) -> Handled {
        let name = self.body["name"].as_str().unwrap_or("").to_string();
        let color = self.body["color"]
            .as_str()
            .unwrap_or("")
            .trim()
            .trim_start_matches('#')
            .to_string();
        if !matches!(color.len(), 3 | 6) || !color.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.inner.error(422, "ColorPattern"));
        }
        let mut st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let id = st.id();
        let label = Label {
            id,
            name,
            color: color.to_ascii_lowercase(),
            description: self.body["description"].as_str().unwrap_or("").to_string(),
            exclusive: self.body["exclusive"].as_bool().unwrap_or(false),
        };
        let r = st.repo_mut(&key).map_err(|_| self.not_found())?;
        r.labels.push(label.clone());
        let r = &st.repos[&key];
        Ok(Answer::json(201, self.inner.view(&st, r).label(&label)))
    }

    fn issue_labels(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = r
            .issues
            .get(&self.index())
            .ok_or_else(|| self.not_found())?;
        let view = self.inner.view(&st, r);
        let labels = issue
            .labels
            .iter()
            .filter_map(|id| r.labels.iter().find(|l| l.id == *id));
        Ok(Answer::json(
            200,
            Value::Array(labels.map(|l| view.label(l)).collect()),
        ))
    }

    /// IssueLabelsOption `labels`: ids (JSON numbers) or names (strings); anything else is 422.
    /// Ids and names the repository does not have are silently dropped (GetLabelsByIDs /
    /// GetLabelIDsInRepoByNames only return what exists).
    fn wanted_labels(&self, st: &Forge, key: &str) -> Result<Vec<u64>, Answer> {
        let r = &st.repos[key];
        let mut ids = Vec::new();
        for item in self.body["labels"].as_array().into_iter().flatten() {
            let found = match item {
                Value::Number(n) => r.labels.iter().find(|l| Some(l.id) == n.as_u64()),
                Value::String(s) => r.labels.iter().find(|l| &l.name == s),
                _ => {
                    return Err(self
                        .inner
                        .error(422, "a label must be an integer or a string"));
                }
            };
            ids.extend(found.map(|l| l.id));
        }
        Ok(ids)
    }

    fn set_issue_labels(&self, replace: bool) -> Handled {
        let mut st = self.inner.lock();
        let key = self.repo_key(&st)?;
        if !st.repos[&key].issues.contains_key(&self.index()) {
            return Err(self.not_found());
        }
        let wanted = self.wanted_labels(&st, &key)?;
        let merge = |old: &[u64]| {
            let mut ids = if replace { Vec::new() } else { old.to_vec() };
            ids.extend(wanted.iter().filter(|w| replace || !old.contains(w)));
            ids
        };
        self.inner
            .change_labels(&mut st, &key, self.index(), merge, BOT)
            .map_err(|e| self.inner.error(500, &e))?;
        drop(st);
        self.issue_labels()
    }

    /// DeleteIssueLabel: 422 when the label does not exist, else 204 (and the webhook).
    fn remove_issue_label(&self) -> Handled {
        let mut st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let id = self.int_param("id").max(0) as u64;
        if !st.repos[&key].issues.contains_key(&self.index()) {
            return Err(self.not_found());
        }
        if !st.repos[&key].labels.iter().any(|l| l.id == id) {
            return Err(self
                .inner
                .error(422, &format!("label does not exist [id: {id}]")));
        }
        let without = |old: &[u64]| old.iter().copied().filter(|l| *l != id).collect();
        self.inner
            .change_labels(&mut st, &key, self.index(), without, BOT)
            .map_err(|e| self.inner.error(500, &e))?;
        Ok(Answer::empty(204))
    }

    // ---- comments ----

    fn list_comments(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = r
            .issues
            .get(&self.index())
            .ok_or_else(|| self.not_found())?;
        let view = self.inner.view(&st, r);
        Ok(Answer::json(
            200,
            Value::Array(
                issue
                    .comments
                    .iter()
                    .map(|c| view.comment(issue, c))
                    .collect(),
            ),
        ))
    }

    fn create_comment(&self) -> Handled {
        let key = self.repo_key(&self.inner.lock())?;
        let n = self.index();
        if !self.inner.lock().repos[&key].issues.contains_key(&n) {
            return Err(self.not_found());
        }
        let body = self.body["body"].as_str().unwrap_or("");
        let id = self
            .inner
            .add_comment(&key, n, BOT, body)
            .map_err(|e| self.inner.error(500, &e))?;
        let st = self.inner.lock();
        let r = &st.repos[&key];
        let issue = &r.issues[&n];
        let comment = issue
            .comments
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| self.not_found())?;
        Ok(Answer::json(
            201,
            self.inner.view(&st, r).comment(issue, comment),
        ))
    }

    // ---- pull requests ----

    fn list_pulls(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let state = self.q("state").unwrap_or("open");
        let view = self.inner.view(&st, r);
        let items = r
            .issues
            .values()
            .rev()
            .filter(|i| i.pull.is_some())
            .filter(|i| match state {
                "closed" => i.closed,
                "all" => true,
                _ => !i.closed,
            })
            .map(|i| view.pull(i, &self.inner.pull_git(r, i)))
            .collect();
        Ok(self.page_of(items))
    }

    fn pull_issue<'s>(&self, st: &'s Forge, key: &str) -> Result<&'s super::Issue, Answer> {
        st.repos[key]
            .issues
            .get(&self.index())
            .filter(|i| i.pull.is_some())
            .ok_or_else(|| self.not_found())
    }

    fn get_pull(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = self.pull_issue(&st, &key)?;
        Ok(Answer::json(
            200,
            self.inner
                .view(&st, r)
                .pull(issue, &self.inner.pull_git(r, issue)),
        ))
    }

    /// GetPullRequestByBaseHead: `head` is a branch of this repository, or `owner:branch` /
    /// `owner/name:branch` of another (a fork). Like Forgejo's query (no ORDER BY, any state), the
    /// first matching pull request in storage order (the oldest) is answered when several match.
    fn pull_by_base_head(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let base = self.params.get("base").cloned().unwrap_or_default();
        let head = self.params.get("head").cloned().unwrap_or_default();
        let (head_repo, branch) = match head.split_once(':') {
            Some((owner, branch)) if owner.contains('/') => (owner.to_string(), branch),
            Some((owner, branch)) => (format!("{owner}/{}", r.name), branch),
            None => (key.clone(), head.as_str()),
        };
        let issue = r
            .issues
            .values()
            .find(|i| {
                i.pull.as_ref().is_some_and(|p| {
                    let from = p.fork.as_ref().map_or(key.as_str(), |(f, _)| f.as_str());
                    p.base == base && p.head == branch && from.eq_ignore_ascii_case(&head_repo)
                })
            })
            .ok_or_else(|| self.not_found())?;
        Ok(Answer::json(
            200,
            self.inner
                .view(&st, r)
                .pull(issue, &self.inner.pull_git(r, issue)),
        ))
    }

    /// CreatePullRequest, in Forgejo's order: head == base → 422; a missing branch → 404; an open
    /// pull request for the same head and base → 409. ASSUMPTION: a head without commits over
    /// the base is refused with the same 422 as head == base (Forgejo v12's API is only known to
    /// refuse equal names; a pull request with nothing to merge is a daemon bug either way).
    fn create_pull(&self) -> Handled {
        let field = |k: &str| self.body[k].as_str().unwrap_or("").to_string();
        let (base, title, body) = (field("base"), field("title"), field("body"));
        let head = field("head");
        // `owner:branch` names a branch of owner's fork; only same-repository heads exist here.
        let head = match head.split_once(':') {
            Some((owner, branch))
                if owner.eq_ignore_ascii_case(self.params.get("owner").map_or("", |s| s)) =>
            {
                branch.to_string()
            }
            _ => head,
        };
        let no_changes = "Invalid PullRequest: There are no changes between the head and the base";
        if head == base {
            return Err(self.inner.error(422, no_changes));
        }
        let mut st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let (Some(base_sha), Some(head_sha)) = (
            git::branch_sha(&r.path, &base),
            git::branch_sha(&r.path, &head),
        ) else {
            return Err(self.not_found());
        };
        let existing = r.issues.values().find(|i| {
            !i.closed
                && i.pull.as_ref().is_some_and(|p| {
                    p.head == head && p.base == base && !p.merged && p.fork.is_none()
                })
        });
        if let Some(i) = existing {
            let p = i.pull.as_ref().map_or(0, |p| p.id);
            let message = format!(
                "pull request already exists for these targets [id: {p}, issue_id: {}, head_repo_id: {id}, base_repo_id: {id}, head_branch: {head}, base_branch: {base}]",
                i.id,
                id = r.id
            );
            return Err(self.inner.error(409, &message));
        }
        let ahead = git::commits(&r.path, &[&format!("{base_sha}..{head_sha}")])
            .map_err(|e| self.inner.error(500, &e))?;
        if ahead.is_empty() {
            return Err(self.inner.error(422, no_changes));
        }
        let labels: Vec<u64> = self.body["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .filter(|id| r.labels.iter().any(|l| l.id == *id))
            .collect();
        let n = self
            .inner
            .create_pull(
                &mut st,
                &key,
                NewPull {
                    head: &head,
                    base: &base,
                    title: &title,
                    body: &body,
                    labels,
                    author: BOT,
                    fork: None,
                },
            )
            .map_err(|e| self.inner.error(500, &e))?;
        let r = &st.repos[&key];
        let issue = &r.issues[&n];
        Ok(Answer::json(
            201,
            self.inner
                .view(&st, r)
                .pull(issue, &self.inner.pull_git(r, issue)),
        ))
    }

    /// GetPullRequestCommits: base..head while open; merge_base..refs/pull/N/head once merged.
    fn pull_commits(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = self.pull_issue(&st, &key)?;
        let Some(p) = issue.pull.as_ref() else {
            return Err(self.not_found());
        };
        let head = self.inner.pull_git(r, issue).head_sha;
        let from = if p.merged {
            p.merge_base.clone()
        } else {
            format!("refs/heads/{}", p.base)
        };
        let commits = git::commits(&r.path, &[&format!("{from}..{head}")])
            .map_err(|e| self.inner.error(500, &e))?;
        let view = self.inner.view(&st, r);
        let (page, limit) = page_and_limit(&self.query);
        let pages = commits.len().div_ceil(limit);
        Ok(self
            .page_of(commits.iter().map(|c| view.commit(c)).collect())
            .header("X-Page", page.to_string())
            .header("X-PerPage", limit.to_string())
            .header("X-PageCount", pages.to_string())
            .header("X-HasMore", (page < pages).to_string()))
    }

    fn list_reviews(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = self.pull_issue(&st, &key)?;
        let view = self.inner.view(&st, r);
        let reviews = issue
            .pull
            .iter()
            .flat_map(|p| &p.reviews)
            .map(|rv| view.review(issue, rv));
        Ok(Answer::json(200, Value::Array(reviews.collect())))
    }

    fn review_comments(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let issue = self.pull_issue(&st, &key)?;
        let id = self.int_param("id").max(0) as u64;
        let review = issue
            .pull
            .iter()
            .flat_map(|p| &p.reviews)
            .find(|rv| rv.id == id)
            .ok_or_else(|| self.not_found())?;
        let view = self.inner.view(&st, r);
        let comments = review
            .comments
            .iter()
            .map(|c| view.review_comment(issue, review, c));
        Ok(Answer::json(200, Value::Array(comments.collect())))
    }

    /// CompareDiff: `base...head` (or `base..head`), branches or commits; `files` not computed.
    fn compare(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let spec = self.params.get("basehead").cloned().unwrap_or_default();
        let (base, head) = spec
            .split_once("...")
            .or_else(|| spec.split_once(".."))
            .ok_or_else(|| self.not_found())?;
        let resolve =
            |name: &str| git::branch_sha(&r.path, name).or_else(|| git::rev(&r.path, name));
        let (Some(base), Some(head)) = (resolve(base), resolve(head)) else {
            return Err(self.not_found());
        };
        let commits = git::commits(&r.path, &[&format!("{base}..{head}")])
            .map_err(|e| self.inner.error(500, &e))?;
        let view = self.inner.view(&st, r);
        let list: Vec<Value> = commits.iter().map(|c| view.commit(c)).collect();
        Ok(Answer::json(
            200,
            json!({"total_commits": list.len(), "commits": list}),
        ))
    }

    /// GetRepoPermissions: only a site admin, a repository admin or the user themself may ask
    /// (403 otherwise); an unknown user is 404; else `{permission, role_name, user}`.
    fn permission(&self) -> Handled {
        let st = self.inner.lock();
        let key = self.repo_key(&st)?;
        let r = &st.repos[&key];
        let who = self.params.get("collaborator").cloned().unwrap_or_default();
        let doer = r.permission(BOT);
        if !matches!(doer.as_str(), "admin" | "owner") && !who.eq_ignore_ascii_case(BOT) {
            return Err(self.inner.error(
                403,
                "Only admins can query all permissions, repo admins can query all repo permissions, collaborators can query only their own",
            ));
        }
        let Some(login) = st
            .users
            .keys()
            .find(|u| u.eq_ignore_ascii_case(&who))
            .cloned()
        else {
            return Err(self.not_found());
        };
        let permission = r.permission(&login);
        Ok(Answer::json(
            200,
            json!({
                "permission": permission,
                "role_name": permission,
                "user": shapes::user(&self.inner.base, &st.users, &login),
            }),
        ))
    }

    /// CreateHook: points the fake's (single) webhook at `config.url` with `config.secret`.
    fn create_hook(&self) -> Handled {
        self.repo_key(&self.inner.lock())?; // 404 for an unknown repository
        let config = &self.body["config"];
        let url = config["url"].as_str().unwrap_or("");
        if url.is_empty() {
            return Err(self.inner.error(422, "Missing config option: url"));
        }
        self.inner
            .outbox
            .set_target(url, config["secret"].as_str().unwrap_or(""));
        let id = self.inner.lock().id();
        let now = super::now();
        Ok(Answer::json(
            201,
            json!({
                "id": id, "type": self.body["type"].as_str().unwrap_or("forgejo"), "branch_filter": self.body["branch_filter"],
                "config": {"url": url, "content_type": config["content_type"].as_str().unwrap_or("json")},
                "events": self.body["events"], "authorization_header": "", "active": self.body["active"].as_bool().unwrap_or(false),
                "updated_at": now, "created_at": now,
            }),
        ))
    }
}
