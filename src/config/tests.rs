//! The command line's parser, tested through the one service and one pool it describes
//! (seen through [`Flat`], the settings as one list).

use super::policy::{Balance, BreakerPolicy, CheckPolicy, HashSettings};
use super::values::parse_factor;
use super::*;
use std::ffi::OsString;
use std::path::Path;

/// The flags' one service and one pool, as one list of settings.
#[derive(Debug)]
struct Flat {
    listen: (String, u16),
    backends: Vec<BackendSpec>,
    buffer_size: usize,
    buffers: usize,
    pipes: usize,
    pipes_given: bool,
    connect_timeout: Duration,
    retries: u32,
    idle_timeout: Option<Duration>,
    max_conns: usize,
    max_conns_given: bool,
    backlog: i32,
    #[allow(dead_code)]
    workers: Option<usize>,
    breaker: BreakerPolicy,
    checks: Option<CheckPolicy>,
    backends_file: Option<PathBuf>,
    resolve_interval: Option<Duration>,
    drain_timeout: Duration,
    admin: Option<(String, u16)>,
    access_log: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    upgrade_timeout: Duration,
    upgrade_probation: Duration,
    balance: Balance,
    accept_proxy: Option<Duration>,
}

fn flat(c: Config) -> Flat {
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.pools.len(), 1);
    let (s, p, g) = (&c.services[0], &c.pools[0], &c.global);
    assert_eq!(
        (s.name.as_str(), s.pool.as_deref().unwrap_or_default()),
        (DEFAULT_NAME, DEFAULT_NAME)
    );
    Flat {
        listen: s.listen[0].clone(),
        backends: p.backends.clone(),
        buffer_size: g.buffer_size,
        buffers: g.buffers,
        pipes: g.pipes,
        pipes_given: g.pipes_given,
        connect_timeout: s.connect_timeout.unwrap_or(p.connect_timeout),
        retries: s.retries.unwrap_or(p.retries),
        idle_timeout: s.idle_timeout,
        max_conns: g.max_conns,
        max_conns_given: g.max_conns_given,
        backlog: s.backlog,
        workers: g.workers,
        breaker: p.breaker,
        checks: p.checks.clone(),
        backends_file: p.backends_file.clone(),
        resolve_interval: p.resolve_interval,
        drain_timeout: g.drain_timeout,
        admin: g.admin.clone(),
        access_log: g.access_log.clone(),
        pid_file: g.pid_file.clone(),
        upgrade_timeout: g.upgrade_timeout,
        upgrade_probation: g.upgrade_probation,
        balance: p.balance,
        accept_proxy: s.accept_proxy,
    }
}
use std::borrow::Cow;

fn file(text: &str) -> Result<Vec<BackendSpec>, ConfigError> {
    crate::fleet::backends_file::parse_backends_file(text, Path::new("/etc/tcplb/backends"))
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn run(list: &[&str]) -> Flat {
    match parse_args(&args(list)) {
        Ok(Action::Run(c)) => flat(*c),
        other => panic!("expected a config, got {other:?}"),
    }
}

fn err(list: &[&str]) -> String {
    match parse_args(&args(list)) {
        Err(e) => e.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let c = run(&["10.0.0.1:80"]);
    assert_eq!(c.listen, ("127.0.0.1".to_string(), 8080));
    assert_eq!(c.buffer_size, 16 * 1024);
    assert_eq!(c.buffers, 3584);
    assert_eq!((c.pipes, c.pipes_given), (256, false));
    assert_eq!(c.connect_timeout, Duration::from_millis(3000));
    assert_eq!(c.retries, 2);
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(c.max_conns, 10_000);
    assert_eq!(c.backlog, 1024);
    assert_eq!(c.breaker.max_fails, 3);
    assert_eq!(c.breaker.fail_timeout, Duration::from_secs(10));
    assert_eq!(c.checks, None);
    assert_eq!(c.backends_file, None);
    assert_eq!(c.resolve_interval, None);
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.admin, None);
    assert_eq!(c.access_log, None);
    assert_eq!(c.pid_file, None);
    assert_eq!(c.upgrade_timeout, Duration::from_secs(30));
    assert_eq!(c.upgrade_probation, Duration::from_secs(5));
}

#[test]
fn upgrade_options() {
    let c = run(&[
        "--pid-file",
        "/run/tcplb/tcplb.pid",
        "--upgrade-timeout",
        "2.5s",
        "h:1",
    ]);
    assert_eq!(c.pid_file, Some(PathBuf::from("/run/tcplb/tcplb.pid")));
    assert_eq!(c.upgrade_timeout, Duration::from_millis(2500));
    assert_eq!(
        run(&["--upgrade-timeout", "5", "h:1"]).upgrade_timeout,
        Duration::from_secs(5)
    );
    assert!(err(&["--upgrade-timeout", "50ms", "h:1"]).contains("'50ms'"));
    assert!(err(&["--upgrade-timeout", "2h", "h:1"]).contains("'2h'"));
    assert_eq!(
        run(&["--upgrade-probation", "1.5s", "h:1"]).upgrade_probation,
        Duration::from_millis(1500)
    );
    assert_eq!(
        run(&["--upgrade-probation", "0", "h:1"]).upgrade_probation,
        Duration::ZERO
    );
    assert!(err(&["--upgrade-probation", "2h", "h:1"]).contains("'2h'"));
    assert!(err(&["--upgrade-probation", "soon", "h:1"]).contains("'soon'"));
}

#[test]
fn resilience_and_observability_options() {
    let c = run(&[
        "--max-fails",
        "0",
        "--fail-timeout",
        "0.5",
        "--health-interval",
        "2",
        "--rise",
        "1",
        "--fall",
        "4",
        "--backends-file",
        "/etc/tcplb/backends",
        "--resolve-interval",
        "30",
        "--drain-timeout",
        "0",
        "--admin",
        "127.0.0.1:9090",
        "--access-log",
        "-",
    ]);
    assert!(
        c.backends.is_empty(),
        "a backends file may replace positional backends"
    );
    assert_eq!(c.breaker.max_fails, 0);
    assert_eq!(c.breaker.fail_timeout, Duration::from_millis(500));
    assert_eq!(
        c.checks,
        Some(CheckPolicy::connect(
            Duration::from_secs(2),
            1,
            4,
            Duration::from_secs(3)
        ))
    );
    assert_eq!(c.backends_file, Some(PathBuf::from("/etc/tcplb/backends")));
    assert_eq!(c.resolve_interval, Some(Duration::from_secs(30)));
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!(c.admin, Some(("127.0.0.1".to_string(), 9090)));
    assert_eq!(c.access_log, Some(PathBuf::from("-")));
}

#[test]
fn control_characters_from_the_file_are_shown_escaped() {
    let err = file("10.0.0.1:80\x1b[31m\n").expect_err("bad line");
    assert_eq!(
        err.to_string(),
        "line 1: invalid backend '10.0.0.1:80\\x1b[31m': port '80\\x1b[31m' is not a \
         number from 1 to 65535"
    );
    let err = file("ok.example\u{202e}:80\n").expect_err("bad line");
    assert!(err.to_string().contains("ok.example\\u{202e}:80"), "{err}");
    let err = parse_args(&args(&["h:1,\x07\x00\u{85}\\"])).expect_err("bad option");
    assert_eq!(
        err.to_string(),
        "invalid backend 'h:1,\\x07\\x00\\u{85}\\\\': unknown option '\\x07\\x00\\u{85}\\\\'"
    );
    assert!(matches!(printable("plain [::1]:80 é"), Cow::Borrowed(_)));
    assert_eq!(printable("a\tb\r\n\x7f"), "a\\tb\\r\\n\\x7f");
}

#[test]
fn every_duration_option_takes_a_unit() {
    let c = run(&[
        "--connect-timeout",
        "1.5s",
        "--idle-timeout",
        "2m",
        "--fail-timeout",
        "250ms",
        "--health-interval",
        "1.5",
        "--resolve-interval",
        "1h",
        "--drain-timeout",
        "0.5m",
        "h:1",
    ]);
    assert_eq!(c.connect_timeout, Duration::from_millis(1500));
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(120)));
    assert_eq!(c.breaker.fail_timeout, Duration::from_millis(250));
    assert_eq!(
        c.checks.map(|c| c.interval),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(c.resolve_interval, Some(Duration::from_secs(3600)));
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    // A bare number keeps the unit the option always had.
    let c = run(&["--connect-timeout", "3", "--idle-timeout", "3", "h:1"]);
    assert_eq!(c.connect_timeout, Duration::from_millis(3));
    assert_eq!(c.idle_timeout, Some(Duration::from_secs(3)));
    // `0s` is zero like `0`: never time out.
    assert_eq!(run(&["--idle-timeout", "0s", "h:1"]).idle_timeout, None);
    // The ranges are in real time, whatever the unit.
    assert_eq!(
        run(&["--connect-timeout", "60m", "h:1"]).connect_timeout,
        Duration::from_secs(3600)
    );
    assert!(err(&["--connect-timeout", "61m", "h:1"]).contains("'61m'"));
    assert!(err(&["--connect-timeout", "0.5ms", "h:1"]).contains("'0.5ms'"));
    assert!(err(&["--fail-timeout", "9ms", "h:1"]).contains("'9ms'"));
    assert!(err(&["--drain-timeout", "25h", "h:1"]).contains("'25h'"));
    assert!(err(&["--idle-timeout", "8761h", "h:1"]).contains("'8761h'"));
    assert_eq!(
        run(&["--idle-timeout", "8760h", "h:1"]).idle_timeout,
        Some(Duration::from_secs(365 * 86_400))
    );
}

#[test]
fn a_bad_duration_names_itself_and_the_accepted_forms() {
    assert_eq!(
        err(&["--connect-timeout", "3x", "h:1"]),
        "invalid value '3x' for --connect-timeout: expected a duration from 1ms to 1h, \
         such as 250ms, 3s, 1.5s or 2m; a bare number is milliseconds"
    );
    assert_eq!(
        err(&["--fail-timeout", "0", "h:1"]),
        "invalid value '0' for --fail-timeout: expected a duration from 10ms to 24h, \
         such as 250ms, 3s, 1.5s or 2m; a bare number is seconds"
    );
    for option in [
        "idle-timeout",
        "health-interval",
        "resolve-interval",
        "drain-timeout",
    ] {
        let message = err(&[&format!("--{option}"), "5 s", "h:1"]);
        assert!(
            message.starts_with(&format!("invalid value '5 s' for --{option}: "))
                && message.contains("such as 250ms, 3s, 1.5s or 2m")
                && message.contains("a bare number is seconds"),
            "{message}"
        );
    }
}

#[test]
fn address_slips_get_a_message_that_says_what_to_write() {
    assert_eq!(
        err(&["--admin", "9090", "h:1"]),
        "invalid --admin address '9090': expected HOST:PORT, such as 127.0.0.1:9090"
    );
    assert_eq!(
        err(&["--listen", "8080", "h:1"]),
        "invalid --listen address '8080': expected HOST:PORT, such as 127.0.0.1:8080"
    );
    assert_eq!(
        err(&["http://127.0.0.1:6379"]),
        "invalid backend 'http://127.0.0.1:6379': expected HOST:PORT, not a URL: drop \
         'http://'"
    );
    assert_eq!(
        err(&["https://web:443/index.html"]),
        "invalid backend 'https://web:443/index.html': expected HOST:PORT, not a URL: drop \
         'https://' and '/index.html'"
    );
    assert_eq!(
        err(&["127.0.0.1:6379:weight=2"]),
        "invalid backend '127.0.0.1:6379:weight=2': options follow a comma: \
         127.0.0.1:6379,weight=2"
    );
    assert!(
        err(&["[::1]:6379:backup,weight=2"])
            .ends_with("options follow a comma: [::1]:6379,backup,weight=2")
    );
    assert!(err(&["::1:80"]).ends_with("an IPv6 address needs brackets: [ADDR]:PORT"));
    assert!(err(&["2001:db8::5:5432"]).ends_with("needs brackets: [ADDR]:PORT"));
    assert!(err(&["a:b:80"]).contains("expected one ':'"));
    // No message says the same thing twice.
    for bad in [
        vec!["--admin", "9090", "h:1"],
        vec!["--admin", "nope", "h:1"],
        vec!["--listen", "nope", "h:1"],
        vec!["nope"],
    ] {
        let message = err(&bad);
        assert_eq!(
            message.matches("HOST:PORT").count(),
            1,
            "{bad:?}: {message}"
        );
    }
}

#[test]
fn balance_and_proxy_options() {
    let c = run(&["h:1"]);
    assert_eq!(c.balance, Balance::LeastActive);
    assert_eq!(c.accept_proxy, None);
    assert_eq!(
        run(&["--balance", "round-robin", "h:1"]).balance,
        Balance::RoundRobin
    );
    assert_eq!(
        run(&["--balance", "random-two", "h:1"]).balance,
        Balance::RandomTwo
    );
    assert_eq!(
        run(&["--balance", "source-hash", "h:1"]).balance,
        Balance::SourceHash(HashSettings {
            table_size: 65_537,
            balance_factor: None
        })
    );
    let c = run(&[
        "--balance",
        "source-hash",
        "--hash-table-size",
        "16777213",
        "--hash-balance-factor",
        "1.25",
        "--accept-proxy",
        "--proxy-timeout",
        "250ms",
        "h:1,send-proxy",
        "h:2,send-proxy-v2,weight=2",
    ]);
    assert_eq!(
        c.balance,
        Balance::SourceHash(HashSettings {
            table_size: 16_777_213,
            balance_factor: Some(125)
        })
    );
    assert_eq!(c.accept_proxy, Some(Duration::from_millis(250)));
    assert_eq!(c.backends[0].to_string(), "h:1,send-proxy");
    assert_eq!(c.backends[1].to_string(), "h:2,weight=2,send-proxy-v2");
    assert_eq!(
        run(&["--accept-proxy", "h:1"]).accept_proxy,
        Some(Duration::from_secs(5))
    );
    for (text, hundredths) in [("1", 100), ("1.5", 150), ("1.25", 125), ("100", 10_000)] {
        assert_eq!(parse_factor(text), Some(hundredths), "{text}");
    }
    for bad in [
        "0.99", "1.255", "1.", ".5", "100.01", "-1", "1e2", "", "1,5",
    ] {
        assert_eq!(parse_factor(bad), None, "{bad}");
    }
    for bad in ["1", "65536", "16777259", "x"] {
        assert!(
            err(&["--balance", "source-hash", "--hash-table-size", bad, "h:1"])
                .contains("a prime number"),
            "{bad}"
        );
    }
    assert!(err(&["h:1,send-proxy-v3"]).contains("unknown option 'send-proxy-v3'"));
    assert!(err(&["h:1:send-proxy"]).contains("options follow a comma: h:1,send-proxy"));
}

#[test]
fn max_conns_remembers_whether_it_was_given() {
    assert!(!run(&["h:1"]).max_conns_given);
    let c = run(&["--max-conns", "10000", "h:1"]);
    assert!(c.max_conns_given);
    assert_eq!(c.max_conns, 10_000);
}

#[test]
fn backend_specs() {
    let c = run(&[
        "-l",
        "0.0.0.0:9000",
        "10.0.0.11:80",
        "10.0.0.12:80,weight=2",
        "[::1]:5432,backup",
        "db-replica.internal:5432,weight=256,backup",
    ]);
    assert_eq!(c.listen, ("0.0.0.0".to_string(), 9000));
    let specs: Vec<String> = c.backends.iter().map(|b| b.to_string()).collect();
    assert_eq!(
        specs,
        [
            "10.0.0.11:80",
            "10.0.0.12:80,weight=2",
            "[::1]:5432,backup",
            "db-replica.internal:5432,weight=256,backup"
        ]
    );
    assert_eq!(c.backends[2].host, "::1");
    assert!(c.backends[2].backup);
    assert_eq!(c.backends[1].weight, 2);
}

#[test]
fn every_option() {
    let c = run(&[
        "--connect-timeout",
        "250",
        "--retries",
        "0",
        "--idle-timeout",
        "0",
        "--max-conns",
        "7",
        "--backlog",
        "16",
        "--buffer-size",
        "64k",
        "--buffers",
        "10",
        "--pipes",
        "0",
        "h:1",
    ]);
    assert_eq!(c.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.retries, 0);
    assert_eq!(c.idle_timeout, None);
    assert_eq!(c.max_conns, 7);
    assert_eq!(c.backlog, 16);
    assert_eq!(c.buffer_size, 65536);
    assert_eq!(c.buffers, 10);
    assert_eq!((c.pipes, c.pipes_given), (0, true));
    let c = run(&["--buffer-size", "4096", "h:1"]);
    assert_eq!(c.buffers, DEFAULT_POOL_BYTES / 4096);
}

#[test]
fn errors_name_the_bad_value() {
    assert_eq!(err(&[]), "no backend given");
    assert_eq!(err(&["--bogus", "h:1"]), "unknown option '--bogus'");
    assert_eq!(err(&["h:1", "-l"]), "option '-l' needs a value");
    assert!(err(&["foo:bar"]).contains("'foo:bar'"));
    assert!(err(&["foo:bar"]).contains("port 'bar'"));
    assert!(err(&["foo"]).contains("expected HOST:PORT"));
    assert!(err(&["::1:80"]).contains("brackets"));
    assert!(err(&["[zz]:80"]).contains("'zz' is not an IPv6"));
    assert!(err(&["h:0"]).contains("port '0'"));
    assert!(err(&["h:65536"]).contains("port '65536'"));
    assert!(err(&["h:1,weight=0"]).contains("weight '0'"));
    assert!(err(&["h:1,weight=257"]).contains("weight '257'"));
    assert!(err(&["h:1,color=red"]).contains("unknown option 'color=red'"));
    assert!(err(&["bad host:1"]).contains("'bad host'"));
    assert_eq!(
        err(&["--retries", "x", "h:1"]),
        "invalid value 'x' for --retries: expected a whole number from 0 to 16"
    );
    assert!(err(&["--retries", "17", "h:1"]).contains("'17'"));
    assert!(err(&["--max-conns", "0", "h:1"]).contains("'0'"));
    assert!(err(&["--max-conns", "-5", "h:1"]).contains("-5"));
    assert!(err(&["--buffer-size", "10", "h:1"]).contains("'10'"));
    assert!(err(&["--buffer-size", "2m", "h:1"]).contains("'2m'"));
    assert!(err(&["--listen", "nope", "h:1"]).contains("'nope'"));
    assert!(err(&["--retries", "1", "--retries", "2", "h:1"]).contains("more than once"));
    assert!(err(&["--connect-timeout", "99999999999999999999999", "h:1"]).contains("9999"));
    assert!(err(&["--idle-timeout", "-1", "h:1"]).contains("'-1'"));
    assert!(err(&["--fail-timeout", "0", "h:1"]).contains("'0'"));
    assert!(err(&["--rise", "0", "--health-interval", "1", "h:1"]).contains("'0'"));
    assert!(err(&["--admin", "nope", "h:1"]).contains("'nope'"));
    assert!(err(&["--buffer-size", "2m", "h:1"]).contains("from 1k to 1m"));
    assert_eq!(
        err(&["--pipes", "-1", "h:1"]),
        "invalid value '-1' for --pipes: expected a whole number from 0 to 1048576"
    );
    assert!(err(&["--pipes", "1048577", "h:1"]).contains("'1048577'"));
}

#[test]
fn help_and_version() {
    assert_eq!(parse_args(&args(&["-h"])), Ok(Action::Help));
    assert_eq!(parse_args(&args(&["--version"])), Ok(Action::Version));
    let text = usage();
    for flag in [
        "--listen",
        "--connect-timeout",
        "--retries",
        "--idle-timeout",
        "--max-conns",
        "--backlog",
        "--buffer-size",
        "--buffers",
        "--pipes",
        "--max-fails",
        "--fail-timeout",
        "--health-interval",
        "--rise",
        "--fall",
        "--backends-file",
        "--resolve-interval",
        "--drain-timeout",
        "--admin",
        "--access-log",
        "--pid-file",
        "--upgrade-timeout",
        "--upgrade-probation",
        "--balance",
        "--hash-table-size",
        "--hash-balance-factor",
        "--accept-proxy",
        "--proxy-timeout",
        "send-proxy-v2",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
    for note in [
        "from 1k to 1m",
        "250ms, 3s, 1.5s, 2m",
        "a bare number is milliseconds",
        "SIGHUP",
        "SIGTERM, SIGINT",
        "a second one",
        "SIGUSR2",
        "Exit status",
        "0  after --help",
        "1  it cannot start",
        "2  bad usage",
    ] {
        assert!(text.contains(note), "help lacks {note:?}:\n{text}");
    }
}

#[test]
fn admin_on_the_listen_address_is_a_usage_error() {
    let clashes = |listen: &str, admin: &str| match parse_args(&args(&[
        "--listen", listen, "--admin", admin, "h:1",
    ])) {
        Ok(_) => false,
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains(&format!("--admin {admin} and --listen {listen}")),
                "{e}"
            );
            true
        }
    };
    assert!(clashes("127.0.0.1:8080", "127.0.0.1:8080"));
    assert!(clashes("Localhost:8080", "localhost:8080"));
    assert!(clashes("0.0.0.0:8080", "127.0.0.1:8080"));
    assert!(clashes("10.0.0.5:8080", "0.0.0.0:8080"));
    assert!(clashes("[::]:8080", "127.0.0.1:8080"));
    assert!(clashes("[::1]:8080", "[::]:8080"));
    assert!(clashes("[::1]:8080", "[0:0::1]:8080"));
    // Each port 0 is a free port of its own.
    assert!(!clashes("127.0.0.1:0", "127.0.0.1:0"));
    assert!(!clashes("127.0.0.1:8080", "127.0.0.1:9090"));
    assert!(!clashes("127.0.0.1:8080", "127.0.0.2:8080"));
    assert!(!clashes("0.0.0.0:8080", "[::1]:8080"));
    // Names are not resolved here: the bind says which flag failed.
    assert!(!clashes("localhost:8080", "127.0.0.1:8080"));
}
