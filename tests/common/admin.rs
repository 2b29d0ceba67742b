//! What the admin endpoint says, read one way each: `/metrics` through a strict
//! Prometheus text parser ([`Exposition`]), `/backends` as JSON ([`Backends`]), raw HTTP
//! exchanges for the endpoint's own tests, and the access log's lines.

use super::process::Tcplb;
use super::{PATIENCE, wait_until};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

/// Sends a raw HTTP request and reads the response to EOF: (status, body).
pub fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to admin");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// A parsed Prometheus text exposition (format 0.0.4). Parsing is strict: a line that is
/// not a comment, a `# HELP`/`# TYPE` line or a well-formed sample is an error.
#[derive(Debug, Default)]
pub struct Exposition {
    /// `# HELP` text (unescaped) by family name.
    pub help: std::collections::BTreeMap<String, String>,
    /// `# TYPE` by family name.
    pub types: std::collections::BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut e = Exposition::default();
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_metric_name(name).map_err(|w| fail(&w))?;
                let help = unescape(help, false).map_err(|w| fail(&w))?;
                if e.help.insert(name.to_string(), help).is_some() {
                    return Err(fail("a second HELP for the family"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| fail("TYPE lacks a type"))?;
                check_metric_name(name).map_err(|w| fail(&w))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(fail("unknown type"));
                }
                if e.samples.iter().any(|s| family_of(&s.name, name, kind)) {
                    return Err(fail("TYPE after the family's samples"));
                }
                if e.types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(fail("a second TYPE for the family"));
                }
            } else if line.starts_with('#') {
                // Any other comment.
            } else {
                e.samples.push(parse_sample(line).map_err(|w| fail(&w))?);
            }
        }
        Ok(e)
    }

    /// The value of the sample named `name` with exactly `labels` (in any order), or else
    /// of the one whose labels include them (a test need not name the `pool` or `service`
    /// of a process that has one); `None` if there is none. More than one is a mistake of
    /// the test: it fails.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        if let Some(exact) = self
            .samples
            .iter()
            .find(|s| s.name == name && s.labels.len() == labels.len() && s.has_labels(labels))
        {
            return Some(exact.value);
        }
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels));
        let first = found.next()?;
        if let Some(second) = found.next() {
            panic!(
                "{name}{labels:?} names more than one sample: {first:?}, {second:?}: give more \
                 labels"
            );
        }
        Some(first.value)
    }

    /// As [`Exposition::value`], failing the test if the sample is missing.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name}{labels:?}; samples named so: {:?}",
                self.samples
                    .iter()
                    .filter(|s| s.name == name)
                    .collect::<Vec<_>>()
            )
        })
    }

    /// The sum over every sample named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.has_labels(labels))
            .map(|s| s.value)
            .sum()
    }

    /// The family (a name with a `# TYPE`) a sample belongs to.
    pub fn family(&self, sample_name: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(family, kind)| family_of(sample_name, family, kind))
            .map(|(family, _)| family.as_str())
    }
}

/// Whether a sample named `sample` belongs to the family `family` of type `kind`.
fn family_of(sample: &str, family: &str, kind: &str) -> bool {
    if sample == family {
        return true;
    }
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .any(|suffix| sample.strip_suffix(suffix) == Some(family))
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

/// Undoes exposition escaping: `\\` and `\n` (HELP text), plus `\"` in label values.
fn unescape(text: &str, label_value: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label_value => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
            let key = key.trim_start_matches(',');
            check_metric_name(key).map_err(|_| format!("bad label name {key:?}"))?;
            // The value runs to the first unescaped double quote.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    '\n' => return Err("a raw line feed in a label value".into()),
                    _ => {}
                }
            }
            let end = end.ok_or("an unterminated label value")?;
            labels.push((key.to_string(), unescape(&after[..end], true)?));
            rest = &after[end + 1..];
            if !rest.starts_with(',') && !rest.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
        let mut keys: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err("a label given twice".into());
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A response read from a raw HTTP exchange.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` (then half-closes if `half_close`), reads to EOF and parses the response.
/// Fails the test if the connection is reset or ends without a status line: the server
/// must answer and then close cleanly.
pub fn http_exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect to admin");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream.write_all(request).expect("send request");
    if half_close {
        stream.shutdown(Shutdown::Write).expect("half-close");
    }
    read_http_response(&mut stream)
}

/// Reads a whole response (to EOF) from `stream` and parses it.
pub fn read_http_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("read the response to EOF (the connection must close cleanly)");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8(raw[..split].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Waits until the file at `path` holds at least `n` complete lines and returns them all.
pub fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end + 1]);
        complete.lines().map(str::to_string).collect::<Vec<_>>()
    };
    let mut lines = Vec::new();
    wait_until(
        || {
            lines = read();
            lines.len() >= n
        },
        || format!("{} has {:?}, wanted {n} lines", path.display(), read()),
    );
    lines
}

/// `/backends`, parsed: every service, every pool and each pool's backends.
pub struct Backends {
    pub doc: Value,
}

impl Backends {
    /// `GET /backends` (status 200 required), parsed.
    pub fn get(tcplb: &Tcplb) -> Backends {
        let (status, body) = tcplb.admin_get("/backends");
        assert_eq!(status, 200, "GET /backends: {body}");
        let doc: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/backends is not JSON ({e}): {body}"));
        assert!(
            doc["pools"].is_array() && doc["services"].is_array(),
            "/backends has no pools and services: {body}"
        );
        Backends { doc }
    }

    /// Every backend of every pool, in order.
    pub fn rows(&self) -> Vec<Value> {
        self.pools()
            .iter()
            .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    pub fn pools(&self) -> Vec<Value> {
        self.doc["pools"].as_array().cloned().unwrap_or_default()
    }

    pub fn services(&self) -> Vec<Value> {
        self.doc["services"].as_array().cloned().unwrap_or_default()
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Value {
        self.pools()
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no pool {name} in {}", self.doc))
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Value {
        self.services()
            .into_iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no service {name} in {}", self.doc))
    }

    /// The backend at `addr` (of whichever pool lists it; the test's backends are unique).
    pub fn entry(&self, addr: &str) -> Option<Value> {
        self.rows().into_iter().find(|b| b["address"] == addr)
    }
}

/// One backend of `/backends`, the fields most tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRow {
    pub pool: String,
    pub address: String,
    pub state: String,
    pub active: u64,
    pub connections_total: u64,
    pub connect_failures_total: u64,
}

impl BackendRow {
    fn from(v: &Value) -> BackendRow {
        let text = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {v}"))
                .to_string()
        };
        let number = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
        BackendRow {
            pool: text("pool"),
            address: text("address"),
            state: text("state"),
            active: number("active"),
            connections_total: number("connections_total"),
            connect_failures_total: number("connect_failures_total"),
        }
    }
}

/// Every backend of `/backends`.
pub fn backend_rows(tcplb: &Tcplb) -> Vec<BackendRow> {
    Backends::get(tcplb)
        .rows()
        .iter()
        .map(BackendRow::from)
        .collect()
}

/// The `/backends` row for `addr`, if listed.
pub fn backend_row(tcplb: &Tcplb, addr: SocketAddr) -> Option<BackendRow> {
    Backends::get(tcplb)
        .entry(&addr.to_string())
        .map(|v| BackendRow::from(&v))
}

/// Every backend of `/backends`, as JSON.
pub fn backends_json(tcplb: &Tcplb) -> Vec<Value> {
    Backends::get(tcplb).rows()
}

/// The `/backends` entry for `addr`.
pub fn backend_entry(tcplb: &Tcplb, addr: &str) -> Value {
    let backends = Backends::get(tcplb);
    backends
        .entry(addr)
        .unwrap_or_else(|| panic!("no backend {addr} in {}", backends.doc))
}

/// The value of one sample of `/metrics`, written as exposed
/// (`tcplb_buffer_pool_buffers{state="free"}`): the one sample with that name whose labels
/// include those given.
pub fn metric(tcplb: &Tcplb, sample: &str) -> f64 {
    let wanted = parse_sample(&format!("{sample} 0"))
        .unwrap_or_else(|e| panic!("{sample} is not a sample: {e}"));
    let labels: Vec<(&str, &str)> = wanted
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    tcplb.metrics().get(&wanted.name, &labels)
}
