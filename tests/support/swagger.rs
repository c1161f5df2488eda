//! Request validation against Forgejo's swagger 2.0 document (`swagger.v1.json`, basePath `/api/v1`):
//! route matching (literal segments win over `{params}`), path and query parameter types, and JSON
//! bodies checked the way Go's decoder + Forgejo's `binding:"Required"` would. Owns nothing but the
//! parsed spec; the fake Forgejo turns each [`Failure`] into a violation and a Forgejo-like answer.

#![allow(dead_code)] // each includer uses a part of it

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

/// The spec file in the repository (a byte-identical copy of the shared reference).
pub const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/reference/forgejo/swagger.v1.json"
);

/// Fields that Forgejo's structs mark `binding:"Required"` but whose swagger definitions do not list
/// as `required` (the swagger `required` comes from `// required: true` doc comments only).
/// Source: modules/structs/pull.go `CreatePullRequestOption` (Head, Base, Title).
const BINDING_REQUIRED: &[(&str, &[&str])] =
    &[("CreatePullRequestOption", &["head", "base", "title"])];

/// Path templates whose last `{param}` takes the rest of the path, slashes included: Forgejo routes
/// them with a chi wildcard (`m.Get("/compare/*", …)`, `/raw/*`, `/contents/*`, `/media/*`,
/// `/pulls/{base}/*`).
const REST_PARAMS: &[&str] = &["basehead", "filepath", "head"];

/// Why a request does not fit the spec, and the status Forgejo answers it with.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No path template matches (404).
    NoRoute,
    /// A template matches the path but not with this method (405).
    MethodNotAllowed,
    /// A path parameter of the wrong type: Forgejo reads it with `ParamsInt64` (0 on error) and
    /// then finds nothing (404).
    BadPathParam(String),
    /// A query parameter of the wrong type or outside its enum: Forgejo's `FormInt`/`FormString`
    /// fall back to the default, so the answer is unaffected; still a client bug.
    BadQuery(String),
    /// A required query parameter is missing (422).
    MissingQuery(String),
    /// The body does not bind (422, `binding` / JSON decode errors).
    BadBody(String),
}

/// A matched operation: the template (e.g. `/repos/{owner}/{repo}/pulls/{index}`), the decoded
/// path parameters, and the operation object of the spec.
#[derive(Debug, Clone)]
pub struct Matched {
    pub template: String,
    pub params: HashMap<String, String>,
    operation: Value,
}

enum Part {
    Lit(String),
    Var(String),
}

struct Route {
    template: String,
    segments: Vec<Vec<Part>>,
    rest: bool,
    methods: Map<String, Value>,
}

pub struct Spec {
    base_path: String,
    routes: Vec<Route>,
    definitions: Map<String, Value>,
    responses: Map<String, Value>,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| format!("swagger: {e}"))?;
        let base_path = doc["basePath"].as_str().unwrap_or("").to_string();
        let paths = doc["paths"].as_object().ok_or("swagger: no paths")?;
        let routes = paths.iter().map(|(t, ops)| Route::new(t, ops)).collect();
        let object = |key: &str| doc[key].as_object().cloned().unwrap_or_default();
        Ok(Spec {
            base_path,
            routes,
            definitions: object("definitions"),
            responses: object("responses"),
        })
    }

    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Finds the operation for `method` and a path below the base path (`/repos/a/b/pulls/1`).
    pub fn route(&self, method: &str, path: &str) -> Result<Matched, Failure> {
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let mut candidates: Vec<(Vec<u8>, &Route, HashMap<String, String>)> = self
            .routes
            .iter()
            .filter_map(|r| {
                r.matches(&segments)
                    .map(|(score, params)| (score, r, params))
            })
            .collect();
        if candidates.is_empty() {
            return Err(Failure::NoRoute);
        }
        // Literal segments win: compare the per-segment specificity left to right.
        candidates.sort_by(|a, b| b.0.cmp(&a.0));
        let method = method.to_ascii_lowercase();
        let (_, route, params) = candidates
            .into_iter()
            .find(|(_, r, _)| r.methods.contains_key(&method))
            .ok_or(Failure::MethodNotAllowed)?;
        Ok(Matched {
            template: route.template.clone(),
            params,
            operation: route.methods[&method].clone(),
        })
    }

    /// Type-checks path parameters (the first failure).
    pub fn check_path(&self, m: &Matched) -> Result<(), Failure> {
        for p in m.parameters("path") {
            let name = p["name"].as_str().unwrap_or("");
            let value = m.params.get(name).map(String::as_str).unwrap_or("");
            if let Err(e) = check_scalar(p, value) {
                return Err(Failure::BadPathParam(format!("path parameter {name}: {e}")));
            }
        }
        Ok(())
    }

    /// Checks the query against the operation's query parameters: every failure, in order, with
    /// the parameter's name.
    pub fn check_query(&self, m: &Matched, query: &[(String, String)]) -> Vec<(String, Failure)> {
        let mut failures = Vec::new();
        for p in m.parameters("query") {
            let name = p["name"].as_str().unwrap_or("");
            let values: Vec<&str> = query
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.is_empty() && p["required"] == Value::Bool(true) {
                failures.push((
                    name.to_string(),
                    Failure::MissingQuery(format!("query parameter {name} is required")),
                ));
            }
            let scalar = if p["type"] == "array" { &p["items"] } else { p };
            for v in values {
                if let Err(e) = check_scalar(scalar, v) {
                    failures.push((
                        name.to_string(),
                        Failure::BadQuery(format!("query parameter {name}={v:?}: {e}")),
                    ));
                }
            }
        }
        failures
    }

    /// Checks a JSON body against the operation's `in: body` parameter, if it has one.
    /// `content_type` is the request's header: Forgejo binds non-JSON bodies as forms.
    pub fn check_body(
        &self,
        m: &Matched,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), Failure> {
        let Some(param) = m.parameters("body").next() else {
            return Ok(());
        };
        let schema = &param["schema"];
        let bad = |e: String| Err(Failure::BadBody(e));
        if body.is_empty() {
            return match self.missing_required(schema) {
                Some(field) => bad(format!("[{field}]: Required (empty body)")),
                None => Ok(()),
            };
        }
        if !content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json")) {
            return bad(format!(
                "body sent with Content-Type {content_type:?}: Forgejo binds it as a form, not JSON"
            ));
        }
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad(format!("invalid JSON body: {e}")),
        };
        self.check_value(schema, &value, "body")
            .map_err(Failure::BadBody)
    }

    /// Checks a response body the fake itself produced against the operation's answer schema for
    /// `status` (catches the fake drifting from Forgejo's shapes).
    pub fn check_response(&self, m: &Matched, status: u16, body: &Value) -> Result<(), String> {
        let Some(resp) = m.operation["responses"].get(status.to_string()) else {
            return Err(format!("status {status} is not a documented answer"));
        };
        let resp = match resp["$ref"].as_str() {
            Some(r) => self
                .responses
                .get(r.trim_start_matches("#/responses/"))
                .unwrap_or(&Value::Null),
            None => resp,
        };
        match resp.get("schema") {
            Some(schema) => self.check_value(schema, body, "response"),
            None => Ok(()),
        }
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/definitions/");
                (
                    self.definitions.get(name).unwrap_or(&Value::Null),
                    Some(name),
                )
            }
            None => (schema, None),
        }
    }

    /// The first required field of an object schema (for an empty body).
    fn missing_required(&self, schema: &Value) -> Option<String> {
        let (schema, name) = self.resolve(schema);
        required_fields(schema, name).into_iter().next()
    }

    /// Go-decoder semantics: `null` fits anything, unknown fields are ignored, integers must be
    /// integer literals; plus `binding:"Required"` (present and not the zero value).
    fn check_value(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let (schema, def_name) = self.resolve(schema);
        if value.is_null() {
            return Ok(());
        }
        let ty = schema["type"]
            .as_str()
            .unwrap_or(if schema.get("properties").is_some() {
                "object"
            } else {
                ""
            });
        let mismatch = || Err(format!("{at}: cannot unmarshal {} into {ty}", kind(value)));
        match ty {
            "string" if !value.is_string() => mismatch(),
            "integer" if !(value.is_i64() || value.is_u64()) => mismatch(),
            "number" if !value.is_number() => mismatch(),
            "boolean" if !value.is_boolean() => mismatch(),
            "array" => match value.as_array() {
                Some(items) => items.iter().enumerate().try_for_each(|(i, item)| {
                    self.check_value(&schema["items"], item, &format!("{at}[{i}]"))
                }),
                None => mismatch(),
            },
            "object" => match value.as_object() {
                Some(obj) => self.check_object(schema, def_name, obj, at),
                None => mismatch(),
            },
            _ => Ok(()),
        }
    }

    fn check_object(
        &self,
        schema: &Value,
        def_name: Option<&str>,
        obj: &Map<String, Value>,
        at: &str,
    ) -> Result<(), String> {
        for field in required_fields(schema, def_name) {
            if lookup(obj, &field).is_none_or(is_zero) {
                return Err(format!("{at}: [{field}]: Required"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                if let Some(v) = lookup(obj, name) {
                    self.check_value(prop, v, &format!("{at}.{name}"))?;
                }
            }
        } else if let Some(extra) = schema.get("additionalProperties") {
            for (k, v) in obj {
                self.check_value(extra, v, &format!("{at}.{k}"))?;
            }
        }
        Ok(())
    }
}

impl Matched {
    fn parameters<'a>(&'a self, location: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(move |p| p["in"] == location)
    }
}

impl Route {
    fn new(template: &str, methods: &Value) -> Route {
        let segments: Vec<Vec<Part>> = template
            .trim_start_matches('/')
            .split('/')
            .map(parse_segment)
            .collect();
        let rest = matches!(segments.last().map(Vec::as_slice), Some([Part::Var(v)]) if REST_PARAMS.contains(&v.as_str()));
        Route {
            template: template.to_string(),
            segments,
            rest,
            methods: methods.as_object().cloned().unwrap_or_default(),
        }
    }

    /// The specificity (2 literal, 1 mixed, 0 parameter, per segment) and the parameters.
    fn matches(&self, path: &[String]) -> Option<(Vec<u8>, HashMap<String, String>)> {
        let n = self.segments.len();
        if path.len() != n && !(self.rest && path.len() > n) {
            return None;
        }
        let mut params = HashMap::new();
        let mut score = Vec::with_capacity(n);
        for (i, parts) in self.segments.iter().enumerate() {
            let text = if self.rest && i == n - 1 {
                path[i..].join("/")
            } else {
                path[i].clone()
            };
            if text.is_empty() {
                return None;
            }
            match_segment(parts, &text, &mut params)?;
            score.push(match parts.as_slice() {
                [Part::Lit(_)] => 2,
                [Part::Var(_)] => 0,
                _ => 1,
            });
        }
        Some((score, params))
    }
}

fn parse_segment(segment: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = segment;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        parts.push(Part::Var(rest[open + 1..close].to_string()));
        rest = rest.get(close + 1..).unwrap_or("");
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    parts
}

/// Matches one segment (`{index}.{diffType}`, `pinned`, `{owner}`): a parameter runs up to the
/// next literal part's first occurrence (or the segment's end).
fn match_segment(parts: &[Part], text: &str, params: &mut HashMap<String, String>) -> Option<()> {
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        match part {
            Part::Lit(lit) => rest = rest.strip_prefix(lit.as_str())?,
            Part::Var(name) => {
                let end = match parts.get(i + 1) {
                    Some(Part::Lit(next)) => rest.find(next.as_str())?,
                    _ => rest.len(),
                };
                if end == 0 {
                    return None;
                }
                params.insert(name.clone(), rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    rest.is_empty().then_some(())
}

/// A path or query value against a scalar parameter schema (`type`, `enum`).
fn check_scalar(p: &Value, value: &str) -> Result<(), String> {
    match p["type"].as_str() {
        Some("integer") if value.parse::<i64>().is_err() => return Err("not an integer".into()),
        Some("number") if value.parse::<f64>().is_err() => return Err("not a number".into()),
        // Go's strconv.ParseBool.
        Some("boolean")
            if !matches!(
                value,
                "1" | "t"
                    | "T"
                    | "TRUE"
                    | "true"
                    | "True"
                    | "0"
                    | "f"
                    | "F"
                    | "FALSE"
                    | "false"
                    | "False"
            ) =>
        {
            return Err("not a boolean".into());
        }
        _ => {}
    }
    if let Some(allowed) = p["enum"].as_array()
        && !allowed.iter().any(|a| a.as_str() == Some(value))
    {
        return Err(format!("not one of {allowed:?}"));
    }
    Ok(())
}

fn required_fields(schema: &Value, def_name: Option<&str>) -> Vec<String> {
    let mut fields: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    if let Some((_, extra)) = BINDING_REQUIRED.iter().find(|(d, _)| Some(*d) == def_name) {
        fields.extend(extra.iter().map(|f| f.to_string()));
    }
    fields
}

/// Go's encoding/json matches keys case-insensitively (an exact match first).
fn lookup<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// The zero values `binding:"Required"` refuses.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
