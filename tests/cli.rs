//! The command line: help, version, usage errors (one line naming the bad value, exit 2),
//! start-up failures (the address and the OS error, exit 1), and no panic on any input.

mod common;

use common::*;
use std::net::TcpListener;

fn assert_usage_error(args: &[&str], names: &str) {
    let (code, stdout, stderr) = run_cli(args);
    assert_eq!(code, Some(2), "{args:?}: exit code; stderr: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: wrote to stdout: {stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got {stderr:?}");
    assert!(lines[0].starts_with("tcplb: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(names),
        "{args:?}: {stderr} does not name {names:?}"
    );
    assert!(
        lines[0].contains("--help"),
        "{args:?}: no hint to --help: {stderr}"
    );
}

#[test]
fn usage_errors_name_the_bad_value_and_exit_2() {
    assert_usage_error(&[], "no backend");
    assert_usage_error(&["--frobnicate", "127.0.0.1:80"], "--frobnicate");
    assert_usage_error(&["foo:bar"], "foo:bar");
    assert_usage_error(&["127.0.0.1"], "127.0.0.1");
    assert_usage_error(&["127.0.0.1:99999"], "99999");
    assert_usage_error(&["127.0.0.1:80,weight=0"], "weight=0");
    assert_usage_error(&["127.0.0.1:80,weight=1000"], "1000");
    assert_usage_error(&["127.0.0.1:80,sticky"], "sticky");
    assert_usage_error(&["--retries", "many", "127.0.0.1:80"], "many");
    assert_usage_error(&["--max-conns", "0", "127.0.0.1:80"], "'0'");
    assert_usage_error(&["--connect-timeout", "-1", "127.0.0.1:80"], "-1");
    assert_usage_error(&["--idle-timeout", "1,5", "127.0.0.1:80"], "1,5");
    assert_usage_error(&["--health-interval", "-2", "127.0.0.1:80"], "-2");
    assert_usage_error(&["--admin", "127.0.0.1", "127.0.0.1:80"], "127.0.0.1");
    assert_usage_error(&["--backlog", "70000", "127.0.0.1:80"], "70000");
    assert_usage_error(&["--buffer-size", "12", "127.0.0.1:80"], "12");
    assert_usage_error(&["--buffers", "x", "127.0.0.1:80"], "'x'");
    assert_usage_error(&["--listen", "localhost", "127.0.0.1:80"], "localhost");
    assert_usage_error(&["--listen"], "--listen");
    assert_usage_error(&["[::1:80"], "[::1:80");
}

#[test]
fn help_and_version_exit_0() {
    let (code, stdout, _) = run_cli(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--listen",
        "--retries",
        "--max-conns",
        "--buffer-size",
        "BACKEND",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
    let (code, stdout, _) = run_cli(&["-V"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("tcplb {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn start_up_failures_name_the_address_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (code, _, stderr) = run_cli(&["--listen", &addr, "127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{stderr}");
    let last = stderr.lines().last().expect("a message");
    assert!(last.contains(&addr) && last.contains("in use"), "{stderr}");

    let (code, _, stderr) = run_cli(&["no-such-host.invalid:80"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no-such-host.invalid:80"), "{stderr}");
}

#[test]
fn no_input_makes_it_panic() {
    let nasty = [
        "",
        "-",
        "--",
        ":",
        "[",
        "]:",
        "[]:1",
        "::",
        "a:b:c",
        ",",
        "h:1,",
        "h:1,,",
        "h:1,weight",
        "h:1,weight=",
        "h:1,weight=1,weight=2",
        "é:80",
        "h:+1",
        "h: 1",
        " h:1",
        "--listen=",
        "-l:",
        "--buffers=0",
        "--buffer-size=1k",
        "--buffer-size=99999999999m",
        "--buffers=99999999999",
        "h:18446744073709551617",
    ];
    for a in nasty {
        for args in [
            vec![a],
            vec![a, "127.0.0.1:80"],
            vec!["127.0.0.1:80", a],
            vec!["--retries", a, "h:1"],
        ] {
            let (code, _, stderr) = run_cli_no_start(&args);
            assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
            assert!(
                matches!(code, Some(0..=2)),
                "{args:?}: exit {code:?}: {stderr}"
            );
        }
    }
}

/// Like `run_cli`, but a command line that would start serving is stopped by giving it an
/// address that is already taken, so every case ends promptly.
fn run_cli_no_start(args: &[&str]) -> (Option<i32>, String, String) {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut all = vec!["--listen", &addr];
    all.extend_from_slice(args);
    run_cli(&all)
}
