//! Chaos scenarios: steps each virtual user runs once (`setup`) and in a loop (`steps`), from TOML.
//!
//! ```toml
//! headers = { accept = "text/plain" }      # sent with every step (optional)
//!
//! [[setup]]
//! method = "POST"
//! path = "/login"
//! body = "user=vu{{vu}}"
//!
//! [[steps]]
//! path = "/whoami"                         # method defaults to GET
//! expect_status = 200                      # a code or a list; default: any 2xx
//! expect_body_contains = "vu{{vu}}"
//! ```
//!
//! `{{vu}}` is the user's number (from 1) and `{{iter}}` the loop count
//! (from 0; setup steps see 0). They may appear in the path, the body, header
//! values and `expect_body_contains`. `{{uuid}}` is a new random UUID for
//! every request (an `Idempotency-Key`, say); it cannot be expected in a
//! body. A step with a body and no `content-type` header is sent as
//! `application/x-www-form-urlencoded`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;

/// A scenario file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    setup: Vec<RawStep>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Option<String>,
    method: Option<String>,
    path: String,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect_status: Option<RawStatus>,
    expect_body_contains: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStatus {
    One(i64),
    Many(Vec<i64>),
}

/// A scenario that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ScenarioError {
    /// The file (or `built-in scenario`).
    pub origin: String,
    pub message: String,
}

/// What the users do.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Run once per user, in order, before the loop (again from the start if one fails).
    pub setup: Vec<Step>,
    /// Run in a loop; a failed step ends the iteration.
    pub steps: Vec<Step>,
    /// Where it came from, for reports.
    pub source: String,
}

/// One request and what its response must be.
#[derive(Debug, Clone)]
pub struct Step {
    /// `name`, or `METHOD PATH` as written.
    pub label: String,
    pub method: Method,
    pub path: Template,
    pub body: Option<Template>,
    /// The scenario's headers, then the step's (a step's replaces one of the same name).
    pub headers: Vec<(HeaderName, Template)>,
    /// Accepted statuses; `None`: any 2xx.
    pub expect_status: Option<Vec<u16>>,
    pub expect_body_contains: Option<Template>,
}

/// Text with `{{vu}}`, `{{iter}}` and `{{uuid}}` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Vu,
    Iter,
    Uuid,
}

// === impl Template ===

impl Template {
    /// Parses `text`; any `{{...}}` other than `{{vu}}`, `{{iter}}` and `{{uuid}}` is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or_else(|| format!("`{{{{` without `}}}}` in `{text}`"))?;
            parts.push(match after[..close].trim() {
                "vu" => Part::Vu,
                "iter" => Part::Iter,
                "uuid" => Part::Uuid,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{{{other}}}}}` in `{text}`: use {{{{vu}}}}, {{{{iter}}}} or {{{{uuid}}}}"
                    ))
                }
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Appends the text for user `vu` in iteration `iter` to `out` (a
    /// `{{uuid}}` is drawn anew).
    pub fn render_into(&self, vu: usize, iter: u64, out: &mut String) {
        use std::fmt::Write;
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Vu => {
                    let _ = write!(out, "{vu}");
                }
                Part::Iter => {
                    let _ = write!(out, "{iter}");
                }
                Part::Uuid => {
                    // Random, version 4, variant 10 (RFC 9562).
                    let r = rand::random::<u128>();
                    let r = (r & !(0xf << 76)) | (0x4 << 76);
                    let r = (r & !(0x3 << 62)) | (0x2 << 62);
                    let h = format!("{r:032x}");
                    let _ = write!(
                        out,
                        "{}-{}-{}-{}-{}",
                        &h[..8],
                        &h[8..12],
                        &h[12..16],
                        &h[16..20],
                        &h[20..]
                    );
                }
            }
        }
    }

    /// Whether it holds a `{{uuid}}` (new on every render).
    pub fn has_uuid(&self) -> bool {
        self.parts.contains(&Part::Uuid)
    }

    /// The text for user `vu` in iteration `iter`.
    pub fn render(&self, vu: usize, iter: u64) -> String {
        let mut s = String::new();
        self.render_into(vu, iter, &mut s);
        s
    }

    /// Whether it has no placeholder.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }
}

impl fmt::Display for Template {
    /// As written (placeholders as `{{vu}}` and `{{iter}}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::Vu => f.write_str("{{vu}}")?,
                Part::Iter => f.write_str("{{iter}}")?,
                Part::Uuid => f.write_str("{{uuid}}")?,
            }
        }
        Ok(())
    }
}

// === impl Step ===

impl Step {
    /// Whether `status` is one the step accepts.
    pub fn accepts(&self, status: u16) -> bool {
        match &self.expect_status {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }

    /// Whether the step names `status` explicitly (a 5xx it expects is not a failure).
    pub fn names_status(&self, status: u16) -> bool {
        self.expect_status
            .as_ref()
            .is_some_and(|l| l.contains(&status))
    }

    /// Whether the balancer may send the request again after the instance
    /// that had it died: an idempotent method, or a POST or PATCH with an
    /// `Idempotency-Key` (the balancer's own rule).
    pub fn replayable(&self) -> bool {
        let key = self
            .headers
            .iter()
            .any(|(n, _)| *n == crate::proxy::retry::IDEMPOTENCY_KEY);
        crate::proxy::retry::replay_allowed_with(&self.method, key)
    }

    /// The accepted statuses, for messages: `200`, `200 or 302`, `a 2xx`.
    pub fn expected_status_text(&self) -> String {
        match self.expect_status.as_deref() {
            None | Some([]) => "a 2xx".into(),
            Some(list) => {
                let texts: Vec<String> = list.iter().map(u16::to_string).collect();
                texts.join(" or ")
            }
        }
    }
}

// === impl Scenario ===

impl Scenario {
    /// Without a scenario file: `GET /`, expecting a 2xx.
    pub fn default_get() -> Scenario {
        Scenario {
            setup: Vec::new(),
            steps: vec![Step {
                label: "GET /".into(),
                method: Method::GET,
                path: Template::parse("/").expect("a fixed path"),
                body: None,
                headers: Vec::new(),
                expect_status: None,
                expect_body_contains: None,
            }],
            source: "built-in scenario (GET /, expect a 2xx)".into(),
        }
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            origin: origin.clone(),
            message: format!("cannot read the scenario: {e}"),
        })?;
        Scenario::parse(&text, &origin)
    }

    /// Parses and checks scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let err = |message: String| ScenarioError {
            origin: origin.to_owned(),
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!("line {}: ", line_of(text, s.start)))
                .unwrap_or_default();
            err(format!("{at}{}", e.message().trim()))
        })?;
        if raw.steps.is_empty() {
            return Err(err(
                "no `[[steps]]`: a scenario needs at least one step to loop over".into(),
            ));
        }
        let mut common = Vec::new();
        for (name, value) in &raw.headers {
            common.push(header(name, value).map_err(|m| err(format!("headers: {m}")))?);
        }
        let build = |list: &[RawStep], section: &str| -> Result<Vec<Step>, ScenarioError> {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    step(s, &common).map_err(|m| err(format!("{section}[{i}] ({}): {m}", s.path)))
                })
                .collect()
        };
        Ok(Scenario {
            setup: build(&raw.setup, "setup")?,
            steps: build(&raw.steps, "steps")?,
            source: origin.to_owned(),
        })
    }

    /// Whether every step only reads (GET, HEAD or OPTIONS), so any failed
    /// request could have been retried by the balancer.
    pub fn is_read_only(&self) -> bool {
        self.setup
            .iter()
            .chain(&self.steps)
            .all(|s| matches!(s.method, Method::GET | Method::HEAD | Method::OPTIONS))
    }

    /// Whether any step checks the body (the load engine then keeps bodies).
    pub fn reads_bodies(&self) -> bool {
        self.setup
            .iter()
            .chain(&self.steps)
            .any(|s| s.expect_body_contains.is_some())
    }
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A header name and a value template; the value must be a valid header
/// value whatever the placeholders become (they become digits).
fn header(name: &str, value: &str) -> Result<(HeaderName, Template), String> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    let t = Template::parse(value)?;
    HeaderValue::from_str(&t.render(1, 0))
        .map_err(|_| format!("the value of `{n}` has characters a header cannot carry"))?;
    Ok((n, t))
}

fn step(raw: &RawStep, common: &[(HeaderName, Template)]) -> Result<Step, String> {
    let method_text = raw.method.as_deref().unwrap_or("GET").trim();
    let method = Method::from_bytes(method_text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{method_text}` is not an HTTP method"))?;
    if !raw.path.starts_with('/') {
        return Err("the path must start with `/`".into());
    }
    let path = Template::parse(&raw.path)?;
    if path
        .render(1, 0)
        .parse::<http::uri::PathAndQuery>()
        .is_err()
    {
        return Err(
            "not a valid request path (spaces and some characters must be %-encoded)".into(),
        );
    }
    let body = raw.body.as_deref().map(Template::parse).transpose()?;
    let mut headers: Vec<(HeaderName, Template)> = common.to_vec();
    for (name, value) in &raw.headers {
        let (n, t) = header(name, value)?;
        headers.retain(|(h, _)| *h != n);
        headers.push((n, t));
    }
    for (n, _) in &headers {
        if n == http::header::HOST || n == http::header::CONTENT_LENGTH || n == http::header::COOKIE
        {
            return Err(format!(
                "header `{n}` is set by the runner (cookies come from each user's jar)"
            ));
        }
    }
    if body.is_some() && !headers.iter().any(|(n, _)| n == http::header::CONTENT_TYPE) {
        headers.push((
            http::header::CONTENT_TYPE,
            Template::parse("application/x-www-form-urlencoded").expect("fixed"),
        ));
    }
    let expect_status = match &raw.expect_status {
        None => None,
        Some(RawStatus::One(c)) => Some(vec![status(*c)?]),
        Some(RawStatus::Many(list)) if list.is_empty() => {
            return Err("`expect_status` is an empty list".into())
        }
        Some(RawStatus::Many(list)) => {
            Some(list.iter().map(|c| status(*c)).collect::<Result<_, _>>()?)
        }
    };
    let expect_body_contains = raw
        .expect_body_contains
        .as_deref()
        .map(Template::parse)
        .transpose()?;
    if expect_body_contains
        .as_ref()
        .is_some_and(Template::has_uuid)
    {
        return Err(
            "`{{uuid}}` is new for every request: `expect_body_contains` cannot expect it".into(),
        );
    }
    Ok(Step {
        label: raw
            .name
            .clone()
            .unwrap_or_else(|| format!("{method} {}", raw.path)),
        method,
        path,
        body,
        headers,
        expect_status,
        expect_body_contains,
    })
}

fn status(code: i64) -> Result<u16, String> {
    match u16::try_from(code) {
        Ok(c @ 100..=599) => Ok(c),
        _ => Err(format!("`{code}` is not an HTTP status (100 to 599)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_vu_and_iter() {
        let t = Template::parse("/cart?u=vu{{vu}}&i={{ iter }}x").unwrap();
        assert_eq!(t.render(7, 42), "/cart?u=vu7&i=42x");
        assert_eq!(t.to_string(), "/cart?u=vu{{vu}}&i={{iter}}x");
        assert!(!t.is_fixed());
        assert!(Template::parse("plain").unwrap().is_fixed());
        assert!(Template::parse("{{user}}")
            .unwrap_err()
            .contains("{{user}}"));
        assert!(Template::parse("a {{vu").unwrap_err().contains("without"));
        let u = Template::parse("{{uuid}}").unwrap();
        let (a, b) = (u.render(1, 0), u.render(1, 0));
        assert_ne!(a, b, "new for every request");
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "{a}");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert_eq!(a.matches('-').count(), 4);
        assert!(u.has_uuid() && !u.is_fixed());
    }

    #[test]
    fn a_full_scenario_parses() {
        let s = Scenario::parse(
            r#"
headers = { accept = "text/plain" }
[[setup]]
method = "post"
path = "/login"
body = "user=vu{{vu}}"
expect_status = 200

[[steps]]
path = "/whoami"
expect_body_contains = "vu{{vu}}"
headers = { accept = "*/*", x-try = "{{iter}}" }

[[steps]]
name = "add"
method = "POST"
path = "/cart"
body = "item=i{{iter}}"
headers = { content-type = "text/plain" }
expect_status = [200, 201]
"#,
            "demo.toml",
        )
        .unwrap();
        assert_eq!(s.setup.len(), 1);
        assert_eq!(s.setup[0].method, Method::POST);
        assert_eq!(s.setup[0].label, "POST /login");
        let names = |st: &Step| -> Vec<String> {
            st.headers.iter().map(|(n, t)| format!("{n}={t}")).collect()
        };
        assert_eq!(
            names(&s.setup[0]),
            [
                "accept=text/plain",
                "content-type=application/x-www-form-urlencoded"
            ]
        );
        assert_eq!(names(&s.steps[0]), ["accept=*/*", "x-try={{iter}}"]);
        assert_eq!(
            names(&s.steps[1]),
            ["accept=text/plain", "content-type=text/plain"]
        );
        assert_eq!(s.steps[1].label, "add");
        assert!(s.steps[0].accepts(204) && !s.steps[0].accepts(302));
        assert!(s.steps[1].accepts(201) && !s.steps[1].accepts(204));
        assert_eq!(s.steps[1].expected_status_text(), "200 or 201");
        assert!(!s.is_read_only());
        assert!(s.reads_bodies());
        assert!(!s.setup[0].replayable() && s.steps[0].replayable());
        assert!(Scenario::default_get().is_read_only());
    }

    #[test]
    fn mistakes_are_named() {
        let e = |text: &str| Scenario::parse(text, "s.toml").unwrap_err().to_string();
        assert!(e("").contains("no `[[steps]]`"));
        let m = e("[[steps]]\npath = \"/\"\nexpect = 200\n");
        assert!(
            m.starts_with("s.toml: line 3") && m.contains("unknown field"),
            "{m}"
        );
        assert!(e("[[steps]]\npath = \"x\"").contains("steps[0] (x): the path must start"));
        assert!(e("[[steps]]\npath = \"/a b\"").contains("not a valid request path"));
        assert!(e("[[steps]]\npath = \"/\"\nmethod = \"G T\"").contains("not an HTTP method"));
        assert!(e("[[steps]]\npath = \"/\"\nexpect_status = 700").contains("`700`"));
        assert!(e("[[steps]]\npath = \"/\"\nexpect_status = []").contains("empty"));
        assert!(e("[[steps]]\npath = \"/{{who}}\"").contains("unknown placeholder"));
        assert!(
            e("[[steps]]\npath = \"/\"\nexpect_body_contains = \"{{uuid}}\"")
                .contains("cannot expect")
        );
        assert!(e("[[steps]]\npath = \"/\"\nheaders = { cookie = \"a=b\" }")
            .contains("set by the runner"));
        assert!(e("[[steps]]\npath = \"/\"\nheaders = { x = \"a\\nb\" }").contains("cannot carry"));
        assert!(e("[[setup]]\npath = \"/\"\n[[steps]]\npath = \"/\"\nbody = 3").contains("line 5"));
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chaos");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
                seen += 1;
            }
        }
        assert!(seen >= 2, "examples in {}", dir.display());
    }
}
