//! Real TLS on both ends, for tests of routing by the ClientHello: certificates made here
//! with `openssl req -x509` ([`Certs`]), backends that are real TLS servers ([`TlsBackend`],
//! Python's `ssl`, that is OpenSSL), and real TLS clients ([`tls_client`], the same; and
//! `openssl s_client` in the tests). The Python side is `tests/common/tls_peer.py`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The peer script.
pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/tls_peer.py");

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A directory of self-signed certificates, one per server name, and a CA file that trusts
/// them all (removed when dropped).
pub struct Certs {
    dir: PathBuf,
    /// Every certificate made, concatenated: what clients verify against.
    pub cafile: PathBuf,
}

impl Certs {
    pub fn new() -> Certs {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tcplb-test-{}-certs-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let cafile = dir.join("ca.pem");
        std::fs::write(&cafile, "").expect("ca file");
        Certs { dir, cafile }
    }

    /// A certificate for `cn` (its subject's CN and its one DNS name): (cert, key).
    pub fn make(&self, cn: &str) -> (PathBuf, PathBuf) {
        let file = cn.replace('*', "star");
        let (cert, key) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = std::fs::read(&cert).expect("read the certificate");
        let mut ca = std::fs::read(&self.cafile).expect("read the CA file");
        ca.extend(pem);
        std::fs::write(&self.cafile, ca).expect("write the CA file");
        (cert, key)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server on 127.0.0.1 with a certificate for `cn` that answers each request with
/// what it saw (its name, the SNI, the ALPN protocol, the PROXY header's source) and an
/// echo; killed when dropped.
pub struct TlsBackend {
    child: Child,
    pub port: u16,
}

impl TlsBackend {
    /// `name` is how it reports itself; `alpn`, the protocols it takes (comma-separated);
    /// `proxy`, whether a PROXY protocol header comes before the TLS.
    pub fn start(certs: &Certs, name: &str, cn: &str, alpn: Option<&str>, proxy: bool) -> Self {
        let (cert, key) = certs.make(cn);
        let mut command = Command::new("python3");
        command
            .arg(PEER)
            .arg("serve")
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--name", name]);
        if let Some(alpn) = alpn {
            command.args(["--alpn", alpn]);
        }
        if proxy {
            command.arg("--proxy");
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 tls_peer.py serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the backend's port line");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        TlsBackend { child, port }
    }

    /// `127.0.0.1:PORT`, for a pool's backends.
    pub fn arg(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a [`tls_client`] connects.
#[derive(Clone, Debug, Default)]
pub struct Hello<'a> {
    pub sni: Option<&'a str>,
    /// Comma-separated protocols.
    pub alpn: Option<&'a str>,
    /// once (default), bytewise, records or split: see tls_peer.py.
    pub pace: Option<&'a str>,
    /// A PROXY protocol v1 header naming this source (`IP:PORT`) first.
    pub proxy_v1: Option<&'a str>,
    /// Bytes of the request (default 1000).
    pub len: Option<usize>,
}

impl Hello<'_> {
    /// As a line of `tls_peer.py client --batch`.
    fn json(&self) -> serde_json::Value {
        let mut line = serde_json::json!({ "len": self.len.unwrap_or(1000) });
        for (key, value) in [
            ("sni", self.sni),
            ("alpn", self.alpn),
            ("pace", self.pace),
            ("proxy_v1", self.proxy_v1),
        ] {
            if let Some(value) = value {
                line[key] = value.into();
            }
        }
        line
    }
}

/// Runs a real TLS client through `port`: what it saw, as JSON (`cn`, `alpn`, `server`,
/// `echo_ok`, `hello_len`; or `error`).
pub fn tls_client(port: u16, cafile: &std::path::Path, hello: &Hello) -> serde_json::Value {
    tls_clients(port, cafile, std::slice::from_ref(hello)).remove(0)
}

/// [`tls_client`] for each of `hellos`, one after another, from one Python process.
pub fn tls_clients(
    port: u16,
    cafile: &std::path::Path,
    hellos: &[Hello],
) -> Vec<serde_json::Value> {
    let mut child = Command::new("python3")
        .arg(PEER)
        .arg("client")
        .arg("--batch")
        .args(["--port", &port.to_string()])
        .arg("--cafile")
        .arg(cafile)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3 tls_peer.py client");
    let mut input = String::new();
    for hello in hellos {
        input.push_str(&hello.json().to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the client's lines");
    let out = child.wait_with_output().expect("the client's answers");
    let text = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: client said {l:?}")))
        .collect();
    assert_eq!(answers.len(), hellos.len(), "client said {text:?}");
    answers
}

/// A client's answer that must be a success: every byte both ways, and which backend.
pub fn served_by(answer: &serde_json::Value) -> (String, String) {
    assert!(answer.get("error").is_none(), "the client failed: {answer}");
    assert_eq!(answer["echo_ok"], true, "bytes differ: {answer}");
    (
        answer["server"]["backend"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        answer["cn"].as_str().unwrap_or("?").to_string(),
    )
}
