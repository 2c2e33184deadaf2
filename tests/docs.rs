//! The README and docs/ stay true: contents lists, links and anchors resolve, and the README's shell commands parse and run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use unstick::cli::Cli;
use unstick::testkit::process::ChildProcess;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_unstick");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TOC_START: &str = "<!-- toc -->";
const TOC_END: &str = "<!-- /toc -->";

// === markdown helpers ===

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pages under docs/, sorted.
fn doc_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// Lines outside fenced code blocks, with their fence state.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// `(level, text)` of every heading outside code blocks.
fn headings(text: &str) -> Vec<(usize, String)> {
    prose_lines(text)
        .into_iter()
        .filter_map(|l| {
            let level = l.chars().take_while(|c| *c == '#').count();
            let rest = l.get(level..)?;
            (level > 0 && rest.starts_with(' ')).then(|| (level, rest.trim().to_owned()))
        })
        .collect()
}

/// Every anchor a page offers (duplicates get `-1`, `-2`, as on GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, h) in headings(text) {
        let base = slug(&h);
        let mut anchor = base.clone();
        let mut n = 0;
        while out.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        out.insert(anchor);
    }
    out
}

/// The contents list for a page: its `##` and `###` headings as links.
fn contents(text: &str) -> String {
    let mut out = String::from("**Contents**\n\n");
    for (level, h) in headings(text) {
        if level == 2 || level == 3 {
            let indent = "  ".repeat(level - 2);
            out.push_str(&format!("{indent}- [{h}](#{})\n", slug(&h)));
        }
    }
    out
}

/// Link targets in prose (inline code removed), e.g. `docs/tls.md#sni`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    out
}

// === contents, links, layout ===

/// Every docs page has a contents list that matches its headings.
/// `UNSTICK_BLESS=1 cargo test --test docs` rewrites the lists.
#[test]
fn every_docs_page_has_current_contents() {
    let bless = std::env::var_os("UNSTICK_BLESS").is_some();
    for page in doc_pages() {
        let text = read(&page);
        let Some(start) = text.find(TOC_START) else {
            panic!("{}: no {TOC_START} marker", page.display());
        };
        let after = start + TOC_START.len();
        let end = text[after..].find(TOC_END).map(|e| after + e);
        let body_from = end.map_or(after, |e| e + TOC_END.len());
        let want = format!("\n{}{TOC_END}", contents(&text[body_from..]));
        let have = end.map(|e| &text[after..e + TOC_END.len()]);
        if have == Some(want.as_str()) {
            continue;
        }
        if bless {
            let updated = format!("{}{want}{}", &text[..after], &text[body_from..]);
            std::fs::write(&page, updated).unwrap();
            continue;
        }
        panic!(
            "{}: the contents list is stale: run UNSTICK_BLESS=1 cargo test --test docs",
            page.display()
        );
    }
}

/// Every relative link in the README, docs/ and benches/README.md names a
/// file that exists, and an anchor that file has.
#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut files = vec![
        Path::new(ROOT).join("README.md"),
        Path::new(ROOT).join("benches/README.md"),
    ];
    files.extend(doc_pages());
    let mut broken = Vec::new();
    for file in &files {
        let text = read(file);
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", file.display()));
                continue;
            }
            if !anchor.is_empty() && !anchors(&read(&target)).contains(anchor) {
                broken.push(format!("{}: {link}: no such heading", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// docs/README.md lists every page, and the README links every page.
#[test]
fn every_docs_page_is_listed_and_linked() {
    let index = read(&Path::new(ROOT).join("docs/README.md"));
    let readme = read(&Path::new(ROOT).join("README.md"));
    for page in doc_pages() {
        let name = page.file_name().unwrap().to_str().unwrap();
        if name == "README.md" {
            continue;
        }
        assert!(
            index.contains(&format!("]({name})")),
            "docs/README.md does not list {name}"
        );
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "README.md does not link docs/{name}"
        );
    }
}

/// The README's first screen says what unstick is, how to install it, and
/// the two commands; the reference lives in docs/.
#[test]
fn readme_first_screen_is_what_install_and_quick_start() {
    let readme = read(&Path::new(ROOT).join("README.md"));
    let screen: String = readme.lines().take(45).collect::<Vec<_>>().join("\n");
    for needed in [
        "# unstick",
        "## Install",
        "cargo install --path .",
        "Rust 1.88",
        "## Quick start",
        "cargo run --release -- demo\ncargo test\n",
    ] {
        assert!(
            screen.contains(needed),
            "the README's first 45 lines lack {needed:?}"
        );
    }
    let sections: Vec<String> = headings(&readme)
        .into_iter()
        .filter(|(l, _)| *l == 2)
        .map(|(_, h)| h)
        .collect();
    assert_eq!(
        sections,
        [
            "Install",
            "Quick start",
            "Front your app",
            "Prove your app is stateless",
            "Load test",
            "Security",
            "Documentation"
        ]
    );
    assert!(
        readme.lines().count() < 150,
        "the README is a path, not the reference"
    );
}

// === the README's shell commands ===

/// One command of a README `sh` block, split into words (comments dropped).
#[derive(Debug)]
struct ShellCommand {
    text: String,
    words: Vec<String>,
}

/// The text of every ```` ```sh ```` block in `text`.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The commands of a block: continued lines joined, split as sh would.
fn commands(block: &str) -> Vec<ShellCommand> {
    block
        .replace("\\\n", " ")
        .lines()
        .filter_map(|line| {
            let words = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
            (!words.is_empty()).then(|| ShellCommand {
                text: line.trim().to_owned(),
                words,
            })
        })
        .collect()
}

/// Every command of every `sh` block in the README.
fn readme_commands() -> Vec<ShellCommand> {
    let readme = read(&Path::new(ROOT).join("README.md"));
    shell_blocks(&readme)
        .iter()
        .flat_map(|b| commands(b))
        .collect()
}

/// The `unstick` arguments a command runs (`unstick ...` or `cargo run
/// --release -- ...`), if it runs unstick.
fn unstick_args(cmd: &ShellCommand) -> Option<Vec<String>> {
    let w = &cmd.words;
    if w[0] == "unstick" {
        return Some(w.clone());
    }
    let run = ["cargo", "run", "--release", "--"];
    (w.len() > run.len() && w[..run.len()] == run).then(|| {
        let mut args = vec!["unstick".to_owned()];
        args.extend_from_slice(&w[run.len()..]);
        args
    })
}

/// The cargo commands a newcomer is told to run, and the other programs
/// the README's blocks call.
const CARGO: [&str; 3] = [
    "cargo test",
    "cargo build --release",
    "cargo install --path .",
];
const PROGRAMS: [&str; 3] = ["curl", "rm", "kill"];

/// Every README shell command is a form this test knows: unstick's own
/// arguments parse with its command-line parser; cargo and shell commands
/// are the expected ones.
#[test]
fn readme_shell_commands_parse() {
    let all = readme_commands();
    assert!(all.len() >= 8, "{all:?}");
    for cmd in &all {
        if let Some(args) = unstick_args(cmd) {
            if let Err(e) = Cli::try_parse_from(&args) {
                panic!("README command `{}` does not parse:\n{e}", cmd.text);
            }
            continue;
        }
        let joined = cmd.words.join(" ");
        let known = CARGO.contains(&joined.as_str())
            || PROGRAMS.contains(&cmd.words[0].as_str())
            || (cmd.words.len() == 1 && cmd.words[0].ends_with("=$(mktemp)"));
        assert!(known, "README command `{}`: add it to this test", cmd.text);
    }
    let manifest = read(&Path::new(ROOT).join("Cargo.toml"));
    assert!(
        manifest.contains("[[bin]]\nname = \"unstick\""),
        "cargo install --path . installs unstick"
    );
}

/// The unstick commands of a README block whose subcommand is `sub`.
fn readme_unstick(sub: &str) -> Vec<Vec<String>> {
    readme_commands()
        .iter()
        .filter_map(unstick_args)
        .filter(|a| a[1] == sub)
        .collect()
}

/// Runs `unstick ARGS` (in the repository) to its end; (exit code, stdout+stderr).
fn run_to_end(args: &[String]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(&args[1..])
        .current_dir(ROOT)
        .env_remove("UNSTICK_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `unstick check` on the example file passes; the `serve` line starts with
/// the backends it names; the `chaos --app` line's plan is drawn (with
/// `--dry-run`: the app is yours, not in this repository).
#[test]
fn readme_check_serve_and_chaos_commands_run() {
    let checks = readme_unstick("check");
    assert!(!checks.is_empty());
    for args in checks {
        let (code, text) = run_to_end(&args);
        assert_eq!(code, 0, "{args:?}: {text}");
    }
    for args in readme_unstick("chaos") {
        if args.iter().any(|a| a == "--demo") {
            continue; // runs 40 s; tests/chaos.rs runs the demo proof
        }
        let mut dry = args.clone();
        dry.push("--dry-run".into());
        let (code, text) = run_to_end(&dry);
        assert_eq!(code, 0, "{dry:?}: {text}");
        assert!(text.contains("seed 42"), "{text}");
    }
    for args in readme_unstick("serve") {
        let mut cmd = Command::new(BIN);
        cmd.args(&args[1..])
            .args(support::PORT_ZERO)
            .env_remove("UNSTICK_CONFIG");
        let mut serve = ChildProcess::spawn(cmd).unwrap();
        let line = serve
            .stderr
            .wait_for("\"event\":\"started\"", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{args:?} did not start: {}", serve.stderr.text()));
        let v: serde_json::Value = serde_json::from_str(&line[line.find('{').unwrap()..]).unwrap();
        let named: Vec<&String> = args
            .iter()
            .skip_while(|a| *a != "--backend")
            .skip(1)
            .step_by(2)
            .collect();
        assert_eq!(
            v["backends"].as_array().unwrap().len(),
            named.len(),
            "{line}"
        );
        assert!(serve.signal(libc::SIGTERM));
        let status = serve
            .wait_timeout(Duration::from_secs(20))
            .expect("serve stops on SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

/// The Quick start as a newcomer runs it: the demo (the README's own
/// arguments, on free ports), the README's curl lines against it (the
/// session holds while the instance changes, and no cookie jar is left in
/// the working directory), then the Load test line against the demo.
#[test]
fn readme_quick_start_and_load_test_run_against_the_demo() {
    let demos = readme_unstick("demo");
    assert_eq!(demos.len(), 1, "{demos:?}");
    let mut cmd = Command::new(BIN);
    cmd.args(&demos[0][1..]).args(support::PORT_ZERO);
    let demo = ChildProcess::spawn(cmd).unwrap();
    let line = demo
        .stderr
        .wait_for("\"event\":\"started\"", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the demo did not start: {}", demo.stderr.text()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let listen = v["listen"].as_str().unwrap().to_owned();

    let readme = read(&Path::new(ROOT).join("README.md"));
    let blocks = shell_blocks(&readme);
    let session = blocks
        .iter()
        .find(|b| b.contains("curl") && b.contains("/login"))
        .expect("a README block that logs in to the demo");
    let cwd = support::Files::new();
    let stdout = support::sh_in(cwd.dir(), &session.replace("127.0.0.1:8080", &listen));
    let users = stdout.lines().filter(|l| l.trim() == "ada").count();
    assert_eq!(
        users, 2,
        "both whoami calls answer the logged-in user:\n{stdout}"
    );
    let instances: BTreeSet<&str> = stdout
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("x-instance-id:"))
        .map(|l| l[14..].trim())
        .collect();
    assert_eq!(instances.len(), 2, "two instances answered:\n{stdout}");
    let left: Vec<_> = std::fs::read_dir(cwd.dir()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the README's lines left files behind: {left:?}"
    );

    let loads = readme_unstick("load");
    assert_eq!(loads.len(), 1, "{loads:?}");
    let args: Vec<String> = loads[0]
        .iter()
        .map(|a| a.replace("127.0.0.1:8080", &listen))
        .collect();
    let (code, text) = run_to_end(&args);
    assert_eq!(code, 0, "{args:?}: {text}");
    assert!(text.contains("status      200"), "{text}");
    drop(demo);
}

// === the repository ===

/// `git` in the repository, if this is a git checkout with git installed.
fn git(args: &[&str]) -> Option<std::process::Output> {
    let out = Command::new("git")
        .args(args)
        .current_dir(ROOT)
        .output()
        .ok()?;
    out.status.success().then_some(out)
}

/// No file that running unstick by hand leaves behind (pid files, redirected
/// stderr, cookie jars, chaos reports) is tracked, and .gitignore keeps them out.
#[test]
fn no_run_leftovers_are_tracked_and_gitignore_keeps_them_out() {
    if git(&["rev-parse", "--git-dir"]).is_none() {
        eprintln!("skipped: not a git checkout (or no git)");
        return;
    }
    let tracked = git(&["ls-files", "-ci", "--exclude-standard"]).unwrap();
    let tracked = String::from_utf8_lossy(&tracked.stdout);
    assert!(
        tracked.trim().is_empty(),
        "tracked files .gitignore excludes:\n{tracked}"
    );
    let leftovers = [
        "lb.pid",
        "lb2.pid",
        "lb2.err",
        "unstick.log",
        "jar",
        "load.json",
    ];
    for path in leftovers.iter().chain(&["chaos-report/verdict.json"]) {
        assert!(
            git(&["check-ignore", "-q", "--no-index", path]).is_some(),
            ".gitignore does not keep out {path}"
        );
    }
}
