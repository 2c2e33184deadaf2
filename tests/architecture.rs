//! The shape of the code, read from `src/`: no two modules import each other (at any depth), and imports point down the layers the brief draws.
//!
//! How it reads the code: every file under `src/` (and every inline `mod
//! name { ... }` in one) is a module; test code (`tests.rs` files and
//! `#[cfg(test)]` items) is left out, and so are comments and string
//! literals. Each `crate::...` and `super::...` path (in `use` trees, with
//! their `{...}` groups, and in expressions) is an edge from the module it
//! is written in to the deepest module the path names.
//!
//! Two checks (and a third: every file opens with its `//!` line):
//! - **No cycles.** For every module, the edges between its children (an
//!   edge between two descendants counts as one between the children they
//!   sit under; a module using its own parent or child is not counted) form
//!   no cycle. So `server` <-> `proxy` fails, and so does `load::engine` <->
//!   `load::raw`.
//! - **Layers.** Top-level modules sit on the layers of [`LAYERS`]; an
//!   import may point to its own layer (the first check keeps those one-way)
//!   or a lower one (a larger index), never up.
//!
//! `UNSTICK_SHOW_GRAPH=1 cargo test --test architecture -- --nocapture`
//! prints the top-level graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules by layer, from the entry points down to the
/// leaves: `cli -> app -> server/admin -> proxy -> balancer, upstream,
/// health, affinity -> http1, config, metrics`, with the modules the brief
/// does not name placed where they are used.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["chaos"],
    &["demo", "testkit"],
    &["load"],
    &["app"],
    &["server", "admin"],
    &["reload"],
    &["proxy"],
    &["balancer", "upstream", "health", "affinity", "hops"],
    &["tls", "dns"],
    &["http1", "config", "metrics", "shutdown", "html", "timefmt"],
];

/// A module path: `["load", "engine"]`; the crate root is empty.
type Module = Vec<String>;

#[test]
fn no_module_imports_another_that_imports_it() {
    let graph = Graph::read();
    let mut cycles = Vec::new();
    for parent in &graph.modules {
        for group in graph.children_graph(parent).cycles() {
            cycles.push(format!(
                "in `{}`: {} import each other",
                name(parent),
                group.join(", ")
            ));
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn imports_point_down_the_layers() {
    let graph = Graph::read();
    let top = graph.children_graph(&Module::new());
    if std::env::var_os("UNSTICK_SHOW_GRAPH").is_some() {
        for (from, to) in &top.edges {
            println!(
                "{from} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut wrong = Vec::new();
    for (from, targets) in &top.edges {
        for to in targets {
            match (layer(from), layer(to)) {
                (Some(a), Some(b)) if a <= b => {}
                (Some(_), Some(_)) => wrong.push(format!("{from} -> {to}")),
                _ => wrong.push(format!("{from} -> {to}: a module not in LAYERS")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers (see LAYERS):\n{}",
        wrong.join("\n")
    );
}

/// The checker itself, on made-up sources: it must see the edges a real
/// cycle has, or the two tests above could not fail.
#[test]
fn the_reader_finds_paths_in_use_trees_and_code() {
    let text = r#"
        //! crate::commented::out
        use crate::a::{b::{C, D}, e as f, self};
        use super::sibling::Thing;
        fn g() { let s = "crate::in_string"; crate::h::call(); }
        #[cfg(test)]
        mod tests { use crate::only_in_tests::X; }
        mod inner { use super::super::up::Y; }
    "#;
    let mut found = Vec::new();
    scan(
        &strip(text),
        &["x".to_owned(), "y".to_owned()],
        &mut |m, p| found.push(format!("{} {}", name(m), p.join("::"))),
    );
    found.sort();
    assert_eq!(
        found,
        [
            "x::y a",
            "x::y a::b::C",
            "x::y a::b::D",
            "x::y a::e",
            "x::y h::call",
            "x::y x::sibling::Thing",
            "x::y::inner x::up::Y",
        ]
    );
}

/// The cycle finder, on a made-up graph: a -> b -> c -> a is one group,
/// d -> e is none.
#[test]
fn the_cycle_finder_groups_modules_that_reach_each_other() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "e"), ("c", "d")] {
        edges.entry(from.into()).or_default().insert(to.into());
    }
    assert_eq!(Children { edges }.cycles(), [["a", "b", "c"]]);
}

/// Every file opens with a `//!` line saying what it is.
#[test]
fn every_file_opens_with_its_purpose() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("a source file");
            !text.starts_with("//! ")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` first line: {missing:?}"
    );
}

/// The longest a function outside tests may be, in lines from its `fn` to
/// its closing brace: one idea that fits a screen.
const MAX_FN_LINES: usize = 80;

/// Functions allowed past [`MAX_FN_LINES`], as `path:name` under `src/`:
/// generated tables and the like (none now).
const LONG_FN_ALLOWED: &[&str] = &[];

/// No function outside test code is longer than [`MAX_FN_LINES`].
#[test]
fn functions_fit_a_screen() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    let mut long = Vec::new();
    for file in &files {
        if module_of(&src, file).is_none() && !file.ends_with("main.rs") {
            continue; // `tests.rs`: test code.
        }
        let text = std::fs::read_to_string(file).expect("a source file");
        let rel = file.strip_prefix(&src).expect("under src").display();
        for (name, lines) in functions(&without_tests(&strip(&text))) {
            let key = format!("{rel}:{name}");
            if lines > MAX_FN_LINES && !LONG_FN_ALLOWED.contains(&key.as_str()) {
                long.push(format!("{key} is {lines} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them into named steps):\n{}",
        long.join("\n")
    );
}

/// The function reader, on made-up sources: it must count a long body, see
/// nested and `async`/`pub(crate)` functions, and skip test code and
/// bodiless trait items.
#[test]
fn the_function_reader_counts_lines_from_fn_to_its_brace() {
    let body = "    let x = 1;\n".repeat(90);
    let text = format!(
        "pub(crate) async fn long(a: u8) -> u8 {{\n{body}    fn inner() {{ }}\n    a\n}}\n\
         trait T {{ fn bodiless(&self); }}\n\
         #[cfg(test)]\nmod tests {{ fn hidden() {{\n{body}}} }}\n\
         fn one_line() {{ let s = \"}}\"; }}\n"
    );
    let found = functions(&without_tests(&strip(&text)));
    assert_eq!(
        found,
        [
            ("long".to_owned(), 94),
            ("inner".to_owned(), 1),
            ("one_line".to_owned(), 1)
        ]
    );
}

/// `code` (stripped) with `#[cfg(test)]` items blanked out, inline
/// modules included.
fn without_tests(code: &str) -> String {
    let mut out = code.to_owned();
    for (name, range) in inline_modules(code) {
        let inner = match name {
            None => code.as_bytes()[range.clone()]
                .iter()
                .map(|&c| if c == b'\n' { '\n' } else { ' ' })
                .collect(),
            Some(_) => without_tests(&code[range.clone()]),
        };
        out.replace_range(range, &inner);
    }
    out
}

/// Every function with a body in `code` (stripped): its name and its
/// length in lines, from the line of `fn` to that of its closing brace.
fn functions(code: &str) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(n) = code[i..].find("fn ") {
        let at = i + n;
        i = at + 3;
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let name: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body's `{`, unless a `;` ends the item first (a trait's
        // declaration); `{` inside the signature's generics or types
        // does not occur in this crate's style.
        let Some(end) = code[i..].find(['{', ';']).map(|e| i + e) else {
            break;
        };
        if name.is_empty() || b[end] == b';' {
            continue;
        }
        let close = matching_brace(code, end);
        let lines = code[at..close].matches('\n').count() + 1;
        out.push((name, lines));
    }
    out
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

// === the module graph ===

/// Every module and its edges, module to module.
struct Graph {
    modules: BTreeSet<Module>,
    edges: BTreeSet<(Module, Module)>,
}

/// Edges between the children of one module, by name.
struct Children {
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read() -> Graph {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let mut modules = BTreeSet::new();
        let mut paths = Vec::new();
        for file in &files {
            let Some(module) = module_of(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file).expect("a source file");
            modules.insert(Vec::new());
            scan(&strip(&text), &module, &mut |m, p| {
                modules.insert(m.to_vec());
                paths.push((m.to_vec(), p.to_vec()));
            });
            modules.insert(module);
        }
        let edges = paths
            .into_iter()
            .filter_map(|(from, path)| Some((from, resolve(&modules, &path)?)))
            .collect();
        Graph { modules, edges }
    }

    /// The edges between `parent`'s children that the edges of their
    /// descendants make.
    fn children_graph(&self, parent: &Module) -> Children {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let child_of = |m: &Module| {
            (m.len() > parent.len() && m.starts_with(parent)).then(|| m[parent.len()].clone())
        };
        for (from, to) in &self.edges {
            if let (Some(a), Some(b)) = (child_of(from), child_of(to)) {
                if a != b {
                    edges.entry(a).or_default().insert(b);
                }
            }
        }
        Children { edges }
    }
}

impl Children {
    /// The groups of children that reach each other (strongly connected,
    /// more than one), each sorted.
    fn cycles(&self) -> Vec<Vec<String>> {
        let nodes: BTreeSet<&String> = self
            .edges
            .keys()
            .chain(self.edges.values().flatten())
            .collect();
        let reach: BTreeMap<&String, BTreeSet<String>> =
            nodes.iter().map(|n| (*n, self.reachable(n))).collect();
        let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
        for n in &nodes {
            let group: Vec<String> = nodes
                .iter()
                .filter(|m| reach[*n].contains(**m) && reach[**m].contains(*n))
                .map(|m| (*m).clone())
                .collect();
            if group.len() > 1 {
                groups.insert(group);
            }
        }
        groups.into_iter().collect()
    }

    /// Every child `from` reaches by one or more edges.
    fn reachable(&self, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(n) = todo.pop() {
            for next in self.edges.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/load/engine.rs` -> `load::engine`; `lib.rs` -> the root; `main.rs`
/// (another crate) and `tests.rs` files (test code) -> None.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let parts: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("main") | Some("tests") => None,
        Some("lib") => Some(Vec::new()),
        Some("mod") => Some(parts[..parts.len() - 1].to_vec()),
        _ => Some(parts),
    }
}

/// The deepest module `path` names (an absolute path), if not the root.
fn resolve(modules: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
}

// === reading the source ===

/// The text with comments, string and char literals blanked out (lengths
/// and newlines kept), so only code is searched.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let end = literal_end(b, i);
        if end > i {
            out.extend(
                b[i..end]
                    .iter()
                    .map(|&c| if c == b'\n' { b'\n' } else { b' ' }),
            );
            i = end;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("ASCII blanks keep UTF-8")
}

/// Where the comment or literal starting at `i` ends (`i` if none starts there).
fn literal_end(b: &[u8], i: usize) -> usize {
    let at = |s: &[u8]| b[i..].starts_with(s);
    if at(b"//") {
        return b[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(b.len(), |n| i + n);
    }
    if at(b"/*") {
        return block_comment_end(b, i);
    }
    let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    if !ident_before && (at(b"r#") || at(b"r\"") || at(b"br#") || at(b"br\"")) {
        return raw_string_end(b, i);
    }
    if b[i] == b'"' {
        return quoted_end(b, i, b'"');
    }
    if b[i] == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
        return quoted_end(b, i, b'\'');
    }
    i
}

fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn raw_string_end(b: &[u8], i: usize) -> usize {
    let open = i + b[i..]
        .iter()
        .position(|&c| c == b'"')
        .expect("a raw string");
    let hashes = b[i..open].iter().filter(|&&c| c == b'#').count();
    let mut close = b"\"".to_vec();
    close.extend(std::iter::repeat_n(b'#', hashes));
    b[open + 1..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(b.len(), |n| open + 1 + n + close.len())
}

fn quoted_end(b: &[u8], mut i: usize, quote: u8) -> usize {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// Calls `found(module, absolute path)` for every `crate::` and `super::`
/// path in `code` (stripped) of `module`, entering inline modules and
/// skipping `#[cfg(test)]` items.
fn scan(code: &str, module: &[String], found: &mut dyn FnMut(&[String], &[String])) {
    let mut rest = code.to_owned();
    for (name, range) in inline_modules(&rest).into_iter().rev() {
        let inner = rest[range.clone()].to_owned();
        if let Some(name) = name {
            let mut m = module.to_vec();
            m.push(name);
            scan(&inner, &m, found);
        }
        rest.replace_range(range, &" ".repeat(inner.len()));
    }
    let mut paths = Vec::new();
    for (at, _) in rest
        .match_indices("crate::")
        .chain(rest.match_indices("super::"))
    {
        let before = rest[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `foo::super::`, `$crate::` is fine (`$` is not matched here).
        }
        let (base, from) = base_of(&rest, at, module);
        parse_tree(&rest, from, base, &mut paths);
    }
    for p in paths {
        found(module, &p);
    }
}

/// The inline `mod name { ... }` blocks and `#[cfg(test)]` items: their
/// bodies' byte ranges, with the module's name (None for test code to drop).
fn inline_modules(code: &str) -> Vec<(Option<String>, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(n) = next_block(code, i) {
        let (name, open) = n;
        let close = matching_brace(code, open);
        out.push((name, open + 1..close));
        i = close;
    }
    out
}

/// The next `#[cfg(test)]` item or `mod name {` from `i`: (the module's name,
/// or None for test code; where its `{` is).
fn next_block(code: &str, i: usize) -> Option<(Option<String>, usize)> {
    let test = code[i..].find("#[cfg(test)]").map(|n| n + i);
    let module = find_mod(code, i);
    match (test, module) {
        (Some(t), m) if m.as_ref().is_none_or(|(at, _, _)| t < *at) => {
            let open = t + code[t..].find(['{', ';'])?;
            // `#[cfg(test)] use ...;` has no body: skip to the next.
            if code.as_bytes()[open] == b';' {
                return next_block(code, open);
            }
            Some((None, open))
        }
        (_, Some((_, name, open))) => Some((Some(name), open)),
        _ => None,
    }
}

/// The next `mod NAME {` from `i`: (where `mod` is, NAME, where `{` is).
fn find_mod(code: &str, mut i: usize) -> Option<(usize, String, usize)> {
    while let Some(n) = code[i..].find("mod ") {
        let at = i + n;
        i = at + 4;
        let word_start = at == 0 || !code.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = code[i..].trim_start();
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let tail = after[name.len()..].trim_start();
        if word_start && !name.is_empty() && tail.starts_with('{') {
            let open = code.len() - tail.len();
            return Some((at, name, open));
        }
    }
    None
}

fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// The absolute module a `crate::`/`super::super::...` prefix at `at` stands
/// for, and where the rest of the path starts.
fn base_of(code: &str, mut at: usize, module: &[String]) -> (Module, usize) {
    if code[at..].starts_with("crate::") {
        return (Vec::new(), at + "crate::".len());
    }
    let mut base = module.to_vec();
    while code[at..].starts_with("super::") {
        base.pop();
        at += "super::".len();
    }
    (base, at)
}

/// Parses a path or use tree at `i` below `prefix`, pushing each full path.
fn parse_tree(code: &str, i: usize, prefix: Module, out: &mut Vec<Module>) -> usize {
    let mut i = skip_space(code, i);
    if code[i..].starts_with('{') {
        i += 1;
        loop {
            i = skip_space(code, i);
            if code[i..].starts_with('}') {
                return i + 1;
            }
            i = parse_tree(code, i, prefix.clone(), out);
            i = skip_space(code, i);
            if code[i..].starts_with(',') {
                i += 1;
            }
            if i >= code.len() {
                return i;
            }
        }
    }
    let word: String = code[i..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if word.is_empty() {
        // `*`, or something that is not a path: the prefix is what is named.
        out.push(prefix);
        return i + code[i..].chars().next().map_or(0, char::len_utf8);
    }
    i += word.len();
    let mut path = prefix;
    if word != "self" {
        path.push(word);
    }
    let j = skip_space(code, i);
    if code[j..].starts_with("::") {
        return parse_tree(code, j + 2, path, out);
    }
    out.push(path);
    skip_rename(code, i)
}

/// Past ` as NAME` if that follows `i`.
fn skip_rename(code: &str, i: usize) -> usize {
    let j = skip_space(code, i);
    let Some(rest) = code[j..].strip_prefix("as") else {
        return i;
    };
    if !rest.starts_with(char::is_whitespace) {
        return i;
    }
    let k = skip_space(code, j + 2);
    k + code[k..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .count()
}

fn skip_space(code: &str, i: usize) -> usize {
    i + code[i..].len() - code[i..].trim_start().len()
}
