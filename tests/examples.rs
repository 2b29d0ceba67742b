//! The config files the project ships (`examples/*.toml`, and any `*.toml` under `deploy/`)
//! pass `tcplb --check`: exit 0, one summary line per service they define, and the counts
//! of services and pools; so does every ```toml block of README.md and docs/*.md. A broken
//! copy of an example fails it: exit 2 with `FILE:LINE:COLUMN`.
//! (`scripts/test` runs the same check on the same files with the binary itself.)

mod common;

use common::{run_cli, scratch_path};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `*.toml` under `dir`, in every folder below it, sorted.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries =
            std::fs::read_dir(&folder).unwrap_or_else(|e| panic!("read {}: {e}", folder.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The names of the `[KIND.NAME]` tables of a config file, as written.
fn tables(text: &str, kind: &str) -> Vec<String> {
    let prefix = format!("[{kind}.");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .filter_map(|rest| rest.split(']').next())
        .map(str::to_string)
        .collect()
}

fn check(path: &Path) -> (Option<i32>, String, String) {
    run_cli(&["--check", "--config", &path.display().to_string()])
}

#[test]
fn every_shipped_config_file_passes_check() {
    let examples = toml_files(&Path::new(ROOT).join("examples"));
    assert!(
        examples.len() >= 3,
        "examples/ has the web + cache, TLS and database configs: {examples:?}"
    );
    let files: Vec<PathBuf> = examples
        .into_iter()
        .chain(toml_files(&Path::new(ROOT).join("deploy")))
        .collect();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read the example");
        let (code, stdout, stderr) = check(path);
        assert_eq!(
            code,
            Some(0),
            "{} fails tcplb --check: {stderr}",
            path.display()
        );
        let (services, pools) = (tables(&text, "services"), tables(&text, "pools"));
        assert!(
            !services.is_empty() && !pools.is_empty(),
            "{}",
            path.display()
        );
        for name in &services {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("service {name}: "))),
                "{}: no summary line for service {name}:\n{stdout}",
                path.display()
            );
        }
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.ends_with(&format!(
                ": ok ({} service{}, {} pool{})",
                services.len(),
                if services.len() == 1 { "" } else { "s" },
                pools.len(),
                if pools.len() == 1 { "" } else { "s" }
            )),
            "{}: {last}",
            path.display()
        );
    }
}

/// The ```toml blocks of a Markdown file.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines();
    while lines.by_ref().any(|l| l.trim() == "```toml") {
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(block.join("\n"));
    }
    blocks
}

#[test]
fn every_config_in_the_readme_and_docs_passes_check() {
    let mut files = vec![Path::new(ROOT).join("README.md")];
    files.extend(
        std::fs::read_dir(Path::new(ROOT).join("docs"))
            .expect("docs/")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for (i, block) in toml_blocks(&text).iter().enumerate() {
            let path = scratch_path(&format!("doc-block-{i}.toml"));
            std::fs::write(&path, block).expect("write the block");
            let (code, _, stderr) = check(&path);
            let _ = std::fs::remove_file(&path);
            assert_eq!(
                code,
                Some(0),
                "config {} of {} fails tcplb --check: {stderr}\n{block}",
                i + 1,
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "the README's quick start and the reference's");
}

#[test]
fn a_broken_example_fails_check_naming_its_line_and_column() {
    let good = std::fs::read_to_string(Path::new(ROOT).join("examples/web-and-cache.toml"))
        .expect("read the example");
    // A slip in a key of the cache service: the line it is on, column 1.
    let slip = "connect-timeout = \"250ms\"";
    let line = good
        .lines()
        .position(|l| l.starts_with(slip))
        .expect("the cache service's connect-timeout")
        + 1;
    let broken = good.replacen(slip, "conect-timeout = \"250ms\"", 1);
    let path = scratch_path("broken-example.toml");
    std::fs::write(&path, broken).expect("write the broken copy");
    let (code, stdout, stderr) = check(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "no summary for a broken file: {stdout}");
    let want = format!(
        "{}:{line}:1: unknown key 'conect-timeout' in [services.cache] (did you mean \
         'connect-timeout'?)",
        path.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}
