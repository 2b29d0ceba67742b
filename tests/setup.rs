//! The README's first screen gives the two commands that do all the set-up on a fresh
//! machine: one runs the demo, one the whole test suite; CI runs that test command, as
//! written, and it sets up what the tests need before it runs them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The commands of the first `sh` block in the README's first 25 lines, comments cut.
fn first_screen_commands() -> Vec<String> {
    let readme = read("README.md");
    let mut lines = readme
        .lines()
        .take(25)
        .skip_while(|l| l.trim() != "```sh")
        .skip(1);
    let mut commands = Vec::new();
    for line in lines.by_ref() {
        if line.trim() == "```" {
            return commands;
        }
        let command = line.split(" #").next().unwrap_or_default().trim();
        if !command.is_empty() {
            commands.push(command.to_string());
        }
    }
    panic!("no ```sh block ends in the first 25 lines of README.md")
}

#[test]
fn the_readme_gives_a_demo_and_a_test_command_up_front_and_ci_runs_the_test_one() {
    let commands = first_screen_commands();
    assert_eq!(commands.len(), 2, "two commands up front: {commands:?}");
    let (demo, test): (Vec<&String>, Vec<&String>) =
        commands.iter().partition(|c| c.contains("demo"));
    assert_eq!((demo.len(), test.len()), (1, 1), "{commands:?}");
    let test = test[0].as_str();
    for command in &commands {
        let mode = std::fs::metadata(Path::new(ROOT).join(command))
            .unwrap_or_else(|e| panic!("{command}: {e}"))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{command} is not executable");
    }
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == test),
        ".ci/run does not run README.md's test command {test:?}"
    );
    let script = read(test);
    let at = |what: &str| {
        script
            .lines()
            .position(|l| !l.trim_start().starts_with('#') && l.contains(what))
            .unwrap_or_else(|| panic!("{test} does not run {what}"))
    };
    assert!(
        at("scripts/setup") < at("cargo test"),
        "{test} tests before it sets up"
    );
    assert!(
        at("TCPLB_TEST_WORKERS=2 cargo test") > at("cargo clippy"),
        "{test} does not run what CI runs"
    );
}
