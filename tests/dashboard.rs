//! The admin dashboard in a real browser: headless Chromium (Debian's `chromium`, which
//! scripts/setup installs; without it these tests say so and pass as skipped) loads `/`
//! from a running tcplb with three services (one routing by TLS server name) and two
//! pools, and the tests read what the page shows from its DOM: every service (its routes
//! too), pool and backend with its state in words; a backend killed meanwhile shown down
//! with the reason within a few seconds, then back up on its slow-start ramp; a backend
//! drained and one in maintenance by `tcplb ctl`; nothing requested from any host but the
//! admin port; readable at a phone's width; a thousand backends rendered and updated
//! without holding the page up. Screenshots go to `target/tmp/dashboard/` (the README's is
//! docs/dashboard.png, taken from there).
//!
//! Plus `/api/stats` against its documented schema (no browser needed).

mod browser;
mod common;

use browser::{Browser, Recorder, find_chromium};
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest a killed backend may take to show as down on the page: a failed check
/// (every 200 ms, one failure is enough) plus a poll (every second) plus slack for a
/// loaded machine.
const DOWN_WITHIN: Duration = Duration::from_secs(5);

/// Where screenshots go (a test artefact: target/tmp/dashboard/).
fn artefact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("artefact directory");
    dir.join(name)
}

/// The Chromium to use, or `None` after saying why these tests skip.
fn chromium() -> Option<PathBuf> {
    match find_chromium() {
        Ok(path) => Some(path),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// What the page shows, read from its DOM: services, pools, and a row per backend with
/// its pool, address, state attribute and visible text.
const READ_PAGE: &str = r#"JSON.stringify({
  renders: Number(document.body.dataset.renders || 0),
  services: [...document.querySelectorAll("[data-service]")].map(e => e.dataset.service),
  pools: [...document.querySelectorAll("article[data-pool]")].map(e => e.dataset.pool),
  backends: [...document.querySelectorAll("tr.backend")].map(r => ({
    pool: r.closest("article[data-pool]").dataset.pool,
    address: r.dataset.backend,
    state: r.dataset.state,
    badges: [...r.querySelectorAll(".badge")].map(b => b.textContent),
    reason: r.querySelector("td.reason").textContent,
  })),
  status: document.getElementById("status").textContent,
  version: document.getElementById("version").textContent,
})"#;

fn read_page(browser: &mut Browser) -> Value {
    let text = browser.eval(READ_PAGE);
    serde_json::from_str(text.as_str().expect("a string")).expect("page JSON")
}

fn row<'a>(page: &'a Value, address: &str) -> &'a Value {
    page["backends"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("no row for {address}: {page:#}"))
}

/// Every URL the page asked for that is not on the admin port.
fn foreign(urls: &[String], admin: &str) -> Vec<String> {
    let origin = format!("http://{admin}/");
    urls.iter()
        .filter(|u| !u.starts_with(&origin))
        .cloned()
        .collect()
}

#[test]
fn the_dashboard_shows_every_service_pool_and_backend_and_a_backend_going_down() {
    let Some(chromium) = chromium() else { return };
    let web = [Backend::start(1, echo()), Backend::start(2, echo())];
    let spare = Backend::start(3, echo());
    let db = [Backend::start(4, echo()), Backend::start(5, echo())];
    let socket = ctl_socket("dashboard");
    let toml = format!(
        "[global]\nadmin = \"127.0.0.1:0\"\ncontrol-socket = \"{}\"\n\n\
         [services.web]\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\n\n\
         [services.db]\nlisten = [\"127.0.0.1:0\"]\npool = \"db\"\n\n\
         [services.tls]\nlisten = [\"127.0.0.1:0\"]\n\
         routes = [{{ sni = \"db.example.com\", pool = \"db\" }}]\n\n\
         [pools.web]\nbackends = [\"{}\", \"{}\", \"{},backup\"]\n\n\
         [pools.db]\nbackends = [\"{}\", \"{}\"]\nhealth-interval = \"200ms\"\nfall = 1\nrise = 1\n\
         slow-start = \"1m\"\n",
        socket.arg(),
        web[0].arg(),
        web[1].arg(),
        spare.arg(),
        db[0].arg(),
        db[1].arg(),
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let admin = tcplb.admin_addr().to_string();
    // Some traffic through both, every byte checked, so there are rates to show.
    for service in ["web", "db"] {
        for i in 0..4u64 {
            let data = pattern(i, 4096);
            let stream =
                std::net::TcpStream::connect(tcplb.service_addr(service)).expect("connect");
            assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
        }
    }

    let recorder = Recorder::start();
    let mut browser = Browser::launch(&chromium, recorder.addr);
    browser.navigate(&format!("http://{admin}/"));
    browser.wait_for(
        "document.querySelectorAll('tr.backend').length === 5",
        PATIENCE,
    );
    let page = read_page(&mut browser);
    let mut services: Vec<&str> = page["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    services.sort_unstable();
    assert_eq!(services, ["db", "tls", "web"], "{page:#}");
    let routes = browser.eval("document.querySelector('[data-service=tls]').textContent");
    assert!(
        routes
            .as_str()
            .is_some_and(|t| t.contains("TLS routes: db.example.com → db")),
        "{routes}"
    );
    let mut pools: Vec<&str> = page["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    pools.sort_unstable();
    assert_eq!(pools, ["db", "web"], "{page:#}");
    for (pool, backends) in [("web", &web[..]), ("db", &db[..])] {
        for b in backends {
            let r = row(&page, &b.arg());
            assert_eq!(r["pool"], pool, "{r}");
            assert_eq!(r["state"], "up", "{r}");
            assert_eq!(r["badges"], serde_json::json!(["up"]), "{r}");
            assert_eq!(r["reason"], "", "{r}");
        }
    }
    let r = row(&page, &spare.arg());
    assert_eq!(r["pool"], "web");
    assert_eq!(r["badges"], serde_json::json!(["up", "backup"]), "{r}");
    let commit = tcplb::version::COMMIT;
    assert!(
        page["version"].as_str().is_some_and(|v| v.contains(commit)),
        "the page names the commit {commit}: {page:#}"
    );

    // A backend dies: the page says so, and why, within a few seconds.
    db[0].kill();
    let killed = Instant::now();
    let selector = format!("tr.backend[data-backend='{}']", db[0].arg());
    let took = browser.wait_for(
        &format!(
            "(() => {{ const r = document.querySelector(\"{selector}\"); \
             return r.dataset.state === 'down' \
               && r.querySelector('.badge').textContent === 'down' \
               && r.querySelector('td.reason').textContent.includes('health check'); }})()"
        ),
        PATIENCE,
    );
    eprintln!(
        "the page showed {} down {:?} after the kill",
        db[0].arg(),
        killed.elapsed().max(took)
    );
    assert!(
        killed.elapsed() <= DOWN_WITHIN,
        "shown down only after {:?}",
        killed.elapsed()
    );
    let page = read_page(&mut browser);
    assert_eq!(
        row(&page, &db[1].arg())["state"],
        "up",
        "the other one is up"
    );
    assert!(
        page["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("live")),
        "{page:#}"
    );

    // The operator's states (tcplb ctl): a backend drained, the backup in maintenance.
    ctl_ok(&socket, &["set", "state", "web", &web[1].arg(), "drain"]);
    ctl_ok(&socket, &["set", "state", "web", &spare.arg(), "maint"]);
    let row_is = |address: String, badges: &str, reason: &str| {
        format!(
            "(() => {{ const r = document.querySelector(\"tr.backend[data-backend='{address}']\"); \
             return [...r.querySelectorAll('.badge')].map(b => b.textContent).join(' ') === '{badges}' \
               && r.querySelector('td.reason').textContent.startsWith('{reason}'); }})()"
        )
    };
    browser.wait_for(
        &row_is(
            web[1].arg(),
            "drain",
            "drain, set by the operator (tcplb ctl)",
        ),
        PATIENCE,
    );
    browser.wait_for(
        &row_is(
            spare.arg(),
            "maint backup",
            "maint, set by the operator (tcplb ctl)",
        ),
        PATIENCE,
    );
    std::fs::write(
        artefact("dashboard-1280x800.png"),
        browser.screenshot(false),
    )
    .expect("write");
    std::fs::write(
        artefact("dashboard-1280-full.png"),
        browser.screenshot(true),
    )
    .expect("write");

    // The killed one comes back: up again, on its slow-start ramp.
    let _revived = Backend::serve(4, rebind(db[0].addr), echo());
    browser.wait_for(&row_is(db[0].arg(), "up slow-start", ""), PATIENCE);

    // A phone's width: nothing wider than the screen (the backends' table scrolls inside
    // its own box).
    browser.viewport(390, 844, true);
    let renders = page["renders"].as_u64().unwrap_or(0);
    browser.wait_for(
        &format!("Number(document.body.dataset.renders) > {renders}"),
        PATIENCE,
    );
    let width = browser.eval("document.documentElement.scrollWidth");
    assert!(
        width.as_u64().is_some_and(|w| w <= 390),
        "the page is {width} px wide at 390"
    );
    std::fs::write(artefact("dashboard-390.png"), browser.screenshot(false)).expect("write");

    // Nothing but the admin port was asked for: by the page's own network log, and by the
    // proxy every other host would have gone through.
    let urls = browser.requested_urls();
    assert!(
        urls.iter().any(|u| u.ends_with("/api/stats")),
        "the page polled /api/stats: {urls:?}"
    );
    assert_eq!(foreign(&urls, &admin), Vec::<String>::new());
    assert_eq!(recorder.requests(), Vec::<String>::new());
}

/// The check above can fail: a page that loads an image from elsewhere is caught, both by
/// the network log and by the recording proxy.
#[test]
fn a_request_to_another_host_is_caught() {
    let Some(chromium) = chromium() else { return };
    let page = "<!doctype html><img src=\"http://dashboard-test.invalid/x.png\">";
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let Ok(mut stream) = stream else { continue };
            use std::io::{BufRead, Write};
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(&stream);
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    let recorder = Recorder::start();
    let mut browser = Browser::launch(&chromium, recorder.addr);
    browser.navigate(&format!("http://{addr}/"));
    wait_until(
        || {
            recorder
                .requests()
                .iter()
                .any(|r| r.contains("dashboard-test.invalid"))
        },
        || format!("the proxy saw {:?}", recorder.requests()),
    );
    // (The event may still be on its way when the request reaches the proxy.)
    let origin = addr.to_string();
    let mut urls = Vec::new();
    wait_until(
        || {
            urls = browser.requested_urls();
            !foreign(&urls, &origin).is_empty()
        },
        || "no foreign request in the network log".to_string(),
    );
    assert_eq!(
        foreign(&urls, &origin),
        ["http://dashboard-test.invalid/x.png"]
    );
}

/// A thousand backends: the page builds a row for each and keeps updating them without a
/// long stall (each update's script time is measured by the page itself).
#[test]
fn a_thousand_backends_render_and_update_without_freezing() {
    let Some(chromium) = chromium() else { return };
    // Addresses nothing listens on: no checks, no traffic, so they stay "up".
    let backends: Vec<String> = (0..1000)
        .map(|i| format!("\"127.0.{}.{}:9\"", 1 + i / 250, 1 + i % 250))
        .collect();
    let toml = format!(
        "[global]\nadmin = \"127.0.0.1:0\"\n\n\
         [services.big]\nlisten = [\"127.0.0.1:0\"]\npool = \"big\"\n\n\
         [pools.big]\nbackends = [{}]\n",
        backends.join(", ")
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let admin = tcplb.admin_addr();
    let recorder = Recorder::start();
    let mut browser = Browser::launch(&chromium, recorder.addr);
    let started = Instant::now();
    browser.navigate(&format!("http://{admin}/"));
    browser.wait_for(
        "document.querySelectorAll('tr.backend').length === 1000",
        PATIENCE,
    );
    let first = started.elapsed();
    // Three more updates, each timed by the page.
    let renders = browser
        .eval("Number(document.body.dataset.renders)")
        .as_u64()
        .unwrap_or(0);
    browser.wait_for(
        &format!("Number(document.body.dataset.renders) >= {}", renders + 3),
        PATIENCE,
    );
    let last_ms: f64 = browser
        .eval("Number(document.body.dataset.renderMs)")
        .as_f64()
        .expect("renderMs");
    let max_ms: f64 = browser
        .eval("Number(document.body.dataset.renderMaxMs)")
        .as_f64()
        .expect("renderMaxMs");
    eprintln!(
        "1000 backends: shown {first:?} after navigating; the longest render took {max_ms} ms \
         (the first, which builds the rows), an update {last_ms} ms"
    );
    // The history's memory (it grows to its bound over 15 minutes: about 7.1 MiB for
    // 1,000 backends, src/admin/frames.rs checks that).
    let (_, body) = tcplb.admin_get("/api/stats");
    let stats: Value = serde_json::from_str(&body).expect("stats");
    let history_bytes = stats["process"]["history_bytes"].as_u64().expect("bytes");
    eprintln!(
        "1000 backends: /api/stats is {} KiB, the history holds {} KiB",
        body.len() / 1024,
        history_bytes / 1024
    );
    assert!(history_bytes < 8 << 20, "{history_bytes} bytes of history");
    // Generous for a loaded machine; a page that rebuilt every row, or laid out the
    // table row by row, takes far longer.
    assert!(max_ms < 1500.0, "a render took {max_ms} ms");
    assert!(last_ms < 250.0, "an update took {last_ms} ms");
    std::fs::write(artefact("dashboard-1000.png"), browser.screenshot(false)).expect("write");
    assert_eq!(recorder.requests(), Vec::<String>::new());
}

/// `/api/stats` has every documented member, of the documented type, for the process,
/// each service, pool and backend; histories are arrays no longer than the capacity;
/// `/api/history?backend=ID` answers for a backend and 404 for no backend.
#[test]
fn api_stats_follows_its_schema() {
    let b = [Backend::start(1, echo()), Backend::start(2, echo())];
    let toml = format!(
        "[global]\nadmin = \"127.0.0.1:0\"\n\n\
         [services.web]\nlisten = [\"127.0.0.1:0\"]\npool = \"web\"\n\n\
         [services.tls]\nlisten = [\"127.0.0.1:0\"]\n\
         routes = [{{ sni = \"api.example.com\", alpn = \"h2\", pool = \"web\" }}]\n\n\
         [pools.web]\nbackends = [\"{}\", \"{},backup\"]\nhealth-interval = \"200ms\"\n",
        b[0].arg(),
        b[1].arg(),
    );
    let tcplb = Tcplb::start_config(&toml, &[]);
    let stats = || -> Value {
        let (status, body) = tcplb.admin_get("/api/stats");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    // A session after the first sample, so the next one has its rates and connect time.
    wait_until(
        || {
            stats()["history"]["process"]["sessions"]
                .as_array()
                .map_or(0, Vec::len)
                >= 1
        },
        || format!("{:#}", stats()["history"]),
    );
    let data = pattern(7, 10_000);
    let stream = std::net::TcpStream::connect(tcplb.service_addr("web")).expect("connect");
    assert_eq!(hash(&echo_through(stream, &data)), hash(&data));
    wait_until(
        || stats()["pools"][0]["now"]["connect_p50_ms"].is_number(),
        || format!("{:#}", stats()["pools"][0]),
    );
    let s = stats();

    let is = |v: &Value, kind: &str| match kind {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "number|null" => v.is_number() || v.is_null(),
        "string|null" => v.is_string() || v.is_null(),
        "bool" => v.is_boolean(),
        "object" => v.is_object(),
        "object|null" => v.is_object() || v.is_null(),
        "array" => v.is_array(),
        _ => unreachable!("{kind}"),
    };
    let check = |what: &str, v: &Value, members: &[(&str, &str)]| {
        for (name, kind) in members {
            assert!(is(&v[name], kind), "{what}.{name} is not {kind}: {v:#}");
        }
    };
    let history = |what: &str, h: &Value, names: &[&str]| {
        for name in names {
            let series = h[name]
                .as_array()
                .unwrap_or_else(|| panic!("{what}.{name}: {h:#}"));
            assert!(!series.is_empty() && series.len() <= 450, "{what}.{name}");
            assert!(
                series.iter().all(|v| v.is_number() || v.is_null()),
                "{what}.{name}"
            );
        }
    };
    check(
        "version",
        &s["version"],
        &[
            ("version", "string"),
            ("commit", "string"),
            ("built", "string"),
        ],
    );
    assert_eq!(s["version"]["commit"], tcplb::version::COMMIT);
    check(
        "process",
        &s["process"],
        &[
            ("uptime_s", "number"),
            ("lifecycle", "string"),
            ("workers", "number"),
            ("sessions", "number"),
            ("accepted_total", "number"),
            ("buffers", "object"),
            ("pipes", "object"),
            ("reloads", "object"),
            ("history_bytes", "number"),
        ],
    );
    assert_eq!(s["process"]["workers"], test_workers());
    check(
        "history",
        &s["history"],
        &[
            ("interval_ms", "number"),
            ("capacity", "number"),
            ("last_unix_ms", "number"),
            ("backend_states", "array"),
            ("process", "object"),
        ],
    );
    assert_eq!(s["history"]["capacity"], 450);
    history(
        "history.process",
        &s["history"]["process"],
        &[
            "sessions",
            "accepted_per_s",
            "buffers_used",
            "pipes_used",
            "cpu_percent",
            "resident_mib",
        ],
    );
    let service = &s["services"][0];
    assert_eq!(service["name"], "web");
    assert_eq!(service["routes"], serde_json::json!([]));
    let routed = &s["services"][1];
    assert_eq!(routed["pool"], Value::Null);
    assert_eq!(
        routed["routes"],
        serde_json::json!([{"sni": "api.example.com", "alpn": "h2", "pool": "web"}])
    );
    check(
        "service",
        service,
        &[
            ("name", "string"),
            ("pool", "string"),
            ("listen", "array"),
            ("active", "number"),
            ("accepted_total", "number"),
            ("shed_total", "number"),
            ("limited_total", "number"),
            ("queued", "number"),
            ("limits", "object|null"),
            ("routes", "array"),
            ("now", "object"),
            ("history", "object"),
        ],
    );
    assert_eq!(service["accepted_total"], 1);
    let service_series = [
        "active",
        "accepted_per_s",
        "shed_per_s",
        "limited_per_s",
        "no_backend_per_s",
    ];
    history("service.history", &service["history"], &service_series);
    check(
        "service.now",
        &service["now"],
        &service_series.map(|n| (n, "number|null")),
    );
    let pool = &s["pools"][0];
    check(
        "pool",
        pool,
        &[
            ("name", "string"),
            ("balance", "string"),
            ("services", "array"),
            ("queue", "object"),
            ("now", "object"),
            ("history", "object"),
            ("backends", "array"),
        ],
    );
    let pool_series = [
        "active",
        "sessions_per_s",
        "queued",
        "connect_p50_ms",
        "connect_p99_ms",
        "backends_up",
    ];
    history("pool.history", &pool["history"], &pool_series);
    check(
        "pool.now",
        &pool["now"],
        &pool_series.map(|n| (n, "number|null")),
    );
    let backends = pool["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 2);
    for backend in backends {
        check(
            "backend",
            backend,
            &[
                ("id", "number"),
                ("pool", "string"),
                ("address", "string"),
                ("name", "string"),
                ("weight", "number"),
                ("backup", "bool"),
                ("state", "string"),
                ("reason", "string|null"),
                ("health_checks", "string"),
                ("active", "number"),
                ("connections_total", "number"),
                ("connect_failures_total", "number"),
                ("consecutive_failures", "number"),
                ("bytes_sent", "number"),
                ("bytes_received", "number"),
                ("maxconn", "number|null"),
                ("now", "object"),
            ],
        );
        check(
            "backend.now",
            &backend["now"],
            &[
                ("active", "number|null"),
                ("sessions_per_s", "number|null"),
                ("sent_bytes_per_s", "number|null"),
                ("received_bytes_per_s", "number|null"),
                ("connect_failures_per_s", "number|null"),
                ("response_p50_ms", "number|null"),
                ("response_p99_ms", "number|null"),
            ],
        );
        // Its history, on its own.
        let id = backend["id"].as_u64().expect("id");
        let (status, body) = tcplb.admin_get(&format!("/api/history?backend={id}"));
        assert_eq!(status, 200, "{body}");
        let h: Value = serde_json::from_str(&body).expect("history JSON");
        assert_eq!(h["address"], backend["address"]);
        history(
            "backend history",
            &h["history"],
            &[
                "active",
                "sessions_per_s",
                "sent_bytes_per_s",
                "received_bytes_per_s",
                "connect_failures_per_s",
                "response_p50_ms",
                "response_p99_ms",
                "state",
            ],
        );
    }
    let first = backends
        .iter()
        .find(|x| x["address"] == b[0].arg().as_str())
        .expect("the first backend");
    assert_eq!(first["bytes_sent"], 10_000);
    assert_eq!(first["backup"], false);
    assert_eq!(first["reason"], Value::Null);
    let ids: Vec<u64> = backends.iter().filter_map(|x| x["id"].as_u64()).collect();
    let unknown = ids.iter().max().copied().unwrap_or(0) + 1000;
    let (status, _) = tcplb.admin_get(&format!("/api/history?backend={unknown}"));
    assert_eq!(status, 404);
    let (status, _) = tcplb.admin_get("/api/history");
    assert_eq!(status, 400);

    // The page and its files: the security headers on every answer.
    for (path, kind) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
        ("/api/stats", "application/json"),
    ] {
        let response = http_exchange(
            tcplb.admin_addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            false,
        );
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|t| t.starts_with(kind)),
            "{path}"
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        let csp = response.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{path}: {csp}"
        );
    }
}
