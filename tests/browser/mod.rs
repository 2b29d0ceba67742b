//! A real headless Chromium driven over the DevTools protocol, without Node or a
//! WebDriver: Chromium is started with `--remote-debugging-pipe` and reads commands (JSON,
//! each ended by a NUL byte) on its descriptor 3 and writes answers and events on its
//! descriptor 4. Used by tests/dashboard.rs.
//!
//! The page lives in a browser context of its own whose proxy is a [`Recorder`], which
//! answers nothing and writes down each request line: every request the page sends to
//! another host goes there (loopback addresses bypass the proxy, so the DevTools network
//! events cover those). The browser's own background requests (Chromium asks Google for
//! the time and for updates, whatever the flags) are not the page's: they do not use the
//! context's proxy.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium to run: `$CHROMIUM`, else `chromium` (Debian's package). `Err` says why
/// none can be used, for the test to print as it skips.
pub fn find_chromium() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("CHROMIUM") {
        Some(path) => vec![path.into()],
        None => vec!["/usr/bin/chromium".into(), "chromium".into()],
    };
    for path in &candidates {
        let ok = Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        // (Ubuntu's chromium is a stub that asks for a snap: it does not print a version.)
        if ok.as_deref().is_some_and(|v| v.contains("Chromium")) {
            return Ok(path.clone());
        }
    }
    Err(format!(
        "no Chromium found (tried {}; scripts/setup installs Debian's `chromium`, or set CHROMIUM)",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Records every request sent to it as a proxy (its first line), and answers none.
pub struct Recorder {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the recorder");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                let line = if line.trim().is_empty() {
                    "(a connection that sent no request line)".to_string()
                } else {
                    line.trim().to_string()
                };
                seen.lock().expect("requests").push(line);
            }
        });
        Recorder { addr, requests }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

/// A running Chromium and the one page it shows.
pub struct Browser {
    child: Child,
    commands: File,
    messages: Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events so far (DevTools messages without an id), oldest first.
    pub events: Vec<Value>,
    profile: PathBuf,
}

/// A pipe's two ends (read, write), both close-on-exec.
fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    /// Starts `chromium` headless with a fresh profile and opens one page (1280×800, its
    /// network events on) in a context whose requests to other hosts go to `proxy`.
    pub fn launch(chromium: &PathBuf, proxy: SocketAddr) -> Browser {
        static PROFILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = PROFILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            std::env::temp_dir().join(format!("tcplb-test-{}-chromium-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile directory");
        let (to_child, commands) = pipe();
        let (messages, from_child) = pipe();
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-breakpad",
                "--metrics-recording-only",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(profile.join("stderr.log")).expect("chromium's log"));
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec this only calls fcntl and dup2, which are
            // async-signal-safe, on descriptors this process owns. The ends are first
            // copied above 10, so moving one onto 3 cannot clobber the other.
            unsafe {
                command.pre_exec(move || {
                    let read = libc::fcntl(to_child, libc::F_DUPFD_CLOEXEC, 10);
                    let write = libc::fcntl(from_child, libc::F_DUPFD_CLOEXEC, 10);
                    if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn().expect("start chromium");
        // SAFETY: each descriptor came from pipe2 above and is owned by nothing else; the
        // child's ends are closed here once it has its copies.
        let (commands, reader) = unsafe {
            libc::close(to_child);
            libc::close(from_child);
            (File::from_raw_fd(commands), File::from_raw_fd(messages))
        };
        let (tx, rx) = channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                message.pop();
                if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            commands,
            messages: rx,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            profile,
        };
        let context = browser.browser_call(
            "Target.createBrowserContext",
            json!({"proxyServer": format!("http://{proxy}")}),
        );
        let target = browser.browser_call(
            "Target.createTarget",
            json!({"url": "about:blank", "browserContextId": context["browserContextId"]}),
        );
        let target = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser.call("Network.enable", json!({}));
        browser.call("Page.enable", json!({}));
        browser.call("Runtime.enable", json!({}));
        browser.viewport(1280, 800, false);
        browser
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("{method}: chromium is gone ({e}): {}", self.log()));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.messages.recv_timeout(left) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{method}: no answer in {COMMAND_TIMEOUT:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{method}: chromium closed its pipe: {}", self.log())
                }
            };
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    panic!("{method}: {error}");
                }
                return message["result"].clone();
            }
            if message.get("id").is_none() {
                self.events.push(message);
            }
        }
    }

    /// A command to the browser itself.
    pub fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(None, method, params)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(Some(&session), method, params)
    }

    /// Takes the events that have arrived (without waiting).
    pub fn drain_events(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            if message.get("id").is_none() {
                self.events.push(message);
            }
        }
    }

    /// The viewport: `width`×`height` CSS pixels, a phone's (`mobile`) or not.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Loads `url` (returns once it is committed; the page's scripts go on).
    pub fn navigate(&mut self, url: &str) {
        let result = self.call("Page.navigate", json!({"url": url}));
        if let Some(error) = result.get("errorText") {
            panic!("navigate to {url}: {error}");
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true; returns how long that took.
    pub fn wait_for(&mut self, expression: &str, patience: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.eval(expression) == Value::Bool(true) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < patience,
                "not true within {patience:?}: {expression}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the viewport, or of the whole page (`full`).
    pub fn screenshot(&mut self, full: bool) -> Vec<u8> {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": full}),
        );
        base64(shot["data"].as_str().expect("screenshot data"))
    }

    /// Every URL the page has requested so far (its network events).
    pub fn requested_urls(&mut self) -> Vec<String> {
        self.drain_events();
        self.events
            .iter()
            .filter(|e| e["method"] == "Network.requestWillBeSent")
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_string))
            .collect()
    }

    /// What Chromium wrote on stderr, for a failure's message.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.profile.join("stderr.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Standard base64 (with padding) to bytes.
pub fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut word = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            word |= value(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&word.to_be_bytes()[1..1 + n]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGVsbG8h"), b"hello!");
    assert_eq!(base64("aA=="), b"h");
}
