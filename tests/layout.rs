//! The architecture, checked: modules form layers, dependencies point down only, no file
//! imports in a cycle, and `config` imports nothing of ours (issue 8); no function and no
//! file outside tests grows past its length limit.
//!
//! It reads every `src/**/*.rs`, collects the `crate::…` and `super::…` paths each file
//! names, and resolves them to files. `cargo test --test layout -- --nocapture` prints the
//! module graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the bottom up. A module may depend only on modules of a lower
/// layer (or on itself). Keep this table and the map in `src/lib.rs` in step.
const LAYERS: &[&[&str]] = &[
    // The WebSocket protocol: frames, message rules, UTF-8, permessage-deflate.
    &["ws"],
    // Leaves: the file format, the boundary error, metric names and handles, log escaping,
    // HTTP answers and parsing.
    &["config", "error", "metrics", "logsafe", "http_util"],
    // Certificates and keys; session recording (files, formats, replay).
    &["tls", "record"],
    // Compiled per-route rules.
    &["policy"],
    // Dialling backends (egress policy applies).
    &["backend"],
    // After the 101: a dialled backend and a client stream, pumped until the end.
    &["session"],
    // One immutable value built from a validated config.
    &["snapshot"],
    // Listeners and requests; admin, signals, reload triggers.
    &["edge", "ops"],
    // Wires edge and ops together: bind, run, drain.
    &["gateway"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The binary's own modules (`src/main.rs` declares them; the library does not): they use
/// the library as `wsgate::…`, so they sit outside its layers.
const BINARY: &[&str] = &["main", "cli"];

/// Every `.rs` file under `src/` except the binary's (`main.rs`, `cli/`) and `lib.rs`, as
/// module paths (`session::bridge`, `config` for `config/mod.rs`).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8 file name")
                .to_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" {
                    p.push(name);
                }
                if p == ["lib"] || p.is_empty() || BINARY.contains(&p[0].as_str()) {
                    continue;
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&src(), &[], &mut out);
    out
}

/// Source without comments (line comments, doc comments and block comments) and string
/// literals, so that prose mentioning `crate::x` is not an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\'', '{'); lifetimes ('a) pass through below.
            let end = b[i + 1..]
                .iter()
                .position(|&c| c == b'\'')
                .map_or(b.len(), |p| i + 1 + p + 1);
            i = end.max(i + 3).min(b.len());
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The module paths a file refers to: `crate::a::b::{c, d::e}` gives `a::b::c`, `a::b::d::e`;
/// `super::x` is resolved against `module`.
fn referenced_paths(module: &str, code: &str) -> Vec<Vec<String>> {
    let parent: Vec<String> = {
        let mut p: Vec<String> = module.split("::").map(String::from).collect();
        p.pop();
        p
    };
    let mut found = Vec::new();
    for (root, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + root.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            expand(&base, rest, &mut found);
        }
    }
    found
}

/// Expand one path tail (`a::b::{c, d}` …) into full paths.
fn expand(base: &[String], tail: &str, out: &mut Vec<Vec<String>>) {
    let tail = tail.trim_start();
    if let Some(group) = tail.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &group[..end];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    let item = inner[start..i.min(inner.len())].trim();
                    if !item.is_empty() && item != "self" {
                        expand(base, item, out);
                    } else if item == "self" {
                        out.push(base.to_vec());
                    }
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = tail
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        return;
    }
    let mut path = base.to_vec();
    path.push(ident.clone());
    let after = &tail[ident.len()..];
    match after.strip_prefix("::") {
        Some(more) => expand(&path, more, out),
        None => out.push(path),
    }
}

/// The longest known module that `path` starts with.
fn resolve(path: &[String], modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// File-level edges: module → modules it refers to (itself excluded).
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut graph = BTreeMap::new();
    for (module, path) in &modules {
        let text = std::fs::read_to_string(path).expect("reading source");
        let code = code_only(&text);
        let mut deps = BTreeSet::new();
        for p in referenced_paths(module, &code) {
            if let Some(target) = resolve(&p, &modules) {
                // A file's own submodules and its parent folder's `mod.rs` are not edges
                // of interest: `mod.rs` re-exports, children use their parent's items.
                if target != *module {
                    deps.insert(target);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

fn top(module: &str) -> &str {
    module.split("::").next().expect("non-empty")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top(module)))
}

/// A cycle in `graph`, if any, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|n| n == next).expect("on stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn module_graph(files: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, deps) in files {
        let entry = graph.entry(top(from).to_owned()).or_default();
        for to in deps {
            if top(to) != top(from) {
                entry.insert(top(to).to_owned());
            }
        }
    }
    graph
}

#[test]
fn print_module_graph() {
    let files = file_graph();
    println!("module graph (top-level module -> what it imports):");
    for (from, deps) in module_graph(&files) {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("  {from:<10} -> {}", deps.join(", "));
    }
    println!("\nfile graph:");
    for (from, deps) in &files {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("  {from:<24} -> {}", deps.join(", "));
    }
}

#[test]
fn every_top_level_module_has_a_layer() {
    let modules = modules();
    let missing: BTreeSet<&str> = modules
        .keys()
        .map(|m| top(m))
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "add these modules to LAYERS in tests/layout.rs (and the map in src/lib.rs): {missing:?}"
    );
}

#[test]
fn dependencies_point_down_only() {
    let mut wrong = Vec::new();
    for (from, deps) in file_graph() {
        for to in deps {
            let (Some(a), Some(b)) = (layer_of(&from), layer_of(&to)) else {
                continue;
            };
            if top(&from) != top(&to) && b >= a {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways between layers:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn config_imports_nothing_of_ours() {
    let outside: Vec<String> = file_graph()
        .into_iter()
        .filter(|(from, _)| top(from) == "config")
        .flat_map(|(from, deps)| {
            deps.into_iter()
                .filter(|to| top(to) != "config")
                .map(move |to| format!("{from} -> {to}"))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "config is plain data and imports no runtime module:\n  {}",
        outside.join("\n  ")
    );
}

/// Imports of `from`'s files that land outside `allowed` (top-level modules).
fn imports_outside(from: &str, allowed: &[&str]) -> Vec<String> {
    file_graph()
        .into_iter()
        .filter(|(f, _)| top(f) == from)
        .flat_map(|(f, deps)| {
            deps.into_iter()
                .filter(|to| !allowed.contains(&top(to)))
                .map(move |to| format!("{f} -> {to}"))
        })
        .collect()
}

#[test]
fn the_protocol_leaf_imports_no_stage() {
    let outside = imports_outside("ws", &["ws"]);
    assert!(
        outside.is_empty(),
        "ws is the WebSocket protocol alone; it knows no route, backend or session:\n  {}",
        outside.join("\n  ")
    );
}

/// `edge` hands a session over once (`session::start`); the pumps, the registry and the
/// session's plumbing are the session's own business.
#[test]
fn edge_reaches_session_through_its_front_door_only() {
    let wrong: Vec<String> = file_graph()
        .into_iter()
        .filter(|(from, _)| top(from) == "edge")
        .flat_map(|(from, deps)| {
            deps.into_iter()
                .filter(|to| top(to) == "session" && to != "session::start")
                .map(move |to| format!("{from} -> {to}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "edge may import session::start only:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn no_import_cycle_between_files() {
    if let Some(cycle) = find_cycle(&file_graph()) {
        panic!("import cycle between files: {}", cycle.join(" -> "));
    }
}

#[test]
fn no_import_cycle_between_modules() {
    if let Some(cycle) = find_cycle(&module_graph(&file_graph())) {
        panic!("import cycle between modules: {}", cycle.join(" -> "));
    }
}

/// The checker itself: it must see grouped, nested, `self` and `super` imports, and ignore
/// comments and strings, or every assertion above could pass on nothing.
#[test]
fn the_checker_reads_imports_as_rustc_does() {
    let code = code_only(
        "use crate::a::{b, c::{d, self}};\n// use crate::zzz;\nlet s = \"crate::yyy\";\n\
         fn f() { super::sib::g(); crate::e::h() }\n",
    );
    let mut got: Vec<String> = referenced_paths("m::n", &code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    got.sort();
    assert_eq!(
        got,
        ["a::b", "a::c", "a::c::d", "e::h", "m::sib::g"],
        "{code}"
    );
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(
        find_cycle(&graph).map(|c| c.len()),
        Some(4),
        "a -> b -> c -> a"
    );
}

/// The longest a function outside tests may be, in lines from `fn` to its closing brace.
/// Longer ones read better as named steps (docs/development.md).
const MAX_FN_LINES: usize = 120;

/// The functions of `text` (one source file) longer than `max` lines, as `(name, first
/// line, lines)`. Comments, strings and char literals are skipped; test code is not counted
/// (an item after `#[cfg(test)]`, which is how test modules are written here).
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let b = text.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let (mut i, mut line, mut depth) = (0, 1, 0usize);
    // Functions whose body is open: (name, first line, depth inside the body).
    let mut open: Vec<(String, usize, usize)> = Vec::new();
    // A `fn` seen whose body has not opened yet: (name, line, depth at the `fn`).
    let mut pending: Option<(String, usize, usize)> = None;
    let mut test_item_next = false;
    let mut skipping_at: Option<usize> = None;
    let mut found = Vec::new();
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if rest.starts_with(b"/*") {
            let mut nest = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    nest += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    nest -= 1;
                    i += 2;
                    if nest == 0 {
                        break;
                    }
                } else {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"#.
        if (rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br"))
            && (i == 0 || !is_ident(b[i - 1]))
        {
            let start = if rest[0] == b'b' { 2 } else { 1 };
            let hashes = rest[start..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(start + hashes) == Some(&b'"') {
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                i += start + hashes + 1;
                while i < b.len() && !b[i..].starts_with(&close) {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += close.len();
                continue;
            }
        }
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    line += usize::from(b.get(i) == Some(&b'\n'));
                    i += 1;
                }
                i += 1;
                continue;
            }
            b'\'' if i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') => {
                // A char literal ('"', '\'', '{'); lifetimes ('a) pass through below.
                i = if b[i + 1] == b'\\' {
                    // '\'', '\n', '\u{…}': the closing quote comes after the escape.
                    b[i + 3..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map_or(b.len(), |p| i + 3 + p + 1)
                } else {
                    i + 3
                };
                continue;
            }
            b'\n' => line += 1,
            b'#' if depth == 0 && rest.starts_with(b"#[cfg(test)]") => test_item_next = true,
            b';' if depth == 0 && test_item_next => test_item_next = false,
            b';' if pending.as_ref().is_some_and(|p| p.2 == depth) => pending = None,
            b'{' => {
                if depth == 0 && test_item_next {
                    test_item_next = false;
                    skipping_at = Some(depth);
                }
                if let Some((name, first, _)) = pending.take_if(|p| p.2 == depth) {
                    open.push((name, first, depth + 1));
                }
                depth += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                if skipping_at == Some(depth) {
                    skipping_at = None;
                }
                if let Some((name, first, _)) = open.pop_if(|f| f.2 == depth + 1) {
                    let lines = line - first + 1;
                    if lines > max {
                        found.push((name, first, lines));
                    }
                }
            }
            b'f' if rest.starts_with(b"fn ")
                && (i == 0 || !is_ident(b[i - 1]))
                && skipping_at.is_none() =>
            {
                let name: String = rest[3..]
                    .iter()
                    .skip_while(|c| c.is_ascii_whitespace())
                    .take_while(|&&c| is_ident(c))
                    .map(|&c| c as char)
                    .collect();
                if !name.is_empty() {
                    pending = Some((name, line, depth));
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Every `.rs` file under `src/` in path order, test-only files (`tests.rs`) left out.
fn code_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("reading src") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_none_or(|n| n != "tests.rs")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.sort();
    files
}

/// Every source file's functions (the binary's too; tests aside) stay under
/// [`MAX_FN_LINES`]: a function that
/// grows past it is split into named steps, as `session::relay`'s hop writer is.
#[test]
fn no_function_outside_tests_is_longer_than_120_lines() {
    let mut long = Vec::new();
    for path in code_files() {
        let text = std::fs::read_to_string(&path).expect("reading source");
        for (name, line, lines) in long_functions(&text, MAX_FN_LINES) {
            let file = path.strip_prefix(src()).unwrap_or(&path).display();
            long.push(format!("src/{file}:{line} fn {name}: {lines} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FN_LINES} lines; split them into named steps:\n  {}",
        long.join("\n  ")
    );
}

/// The length checker itself: it counts bodies, skips braces in strings, chars and
/// comments, skips test modules, and sees nested functions.
#[test]
fn the_length_checker_counts_function_bodies() {
    let text = "fn short() {\n    let s = \"}}}\";\n    let c = '{';\n    let q = '\\'';\n}\n\
                fn long() {\n    // }\n    inner();\n    fn inner() {\n    }\n    let r = r#\"}\"#;\n}\n\
                fn decl();\n\
                #[cfg(test)]\nmod tests {\n    fn very_long() {\n\n\n\n\n\n\n\n\n    }\n}\n";
    let got = long_functions(text, 5);
    assert_eq!(got, vec![("long".to_owned(), 6, 7)], "{text}");
}

/// The most lines of code a source file may hold outside tests: the lines before its
/// `#[cfg(test)]`, or the whole file when it has none. A file that grows past it is split
/// along a seam into a folder of its own (`config/file/`, `metrics/`, `gateway/`).
const MAX_FILE_LINES: usize = 600;

/// The lines of `text` outside tests: those before the first `#[cfg(test)]` at the start of
/// a line, or all of them.
fn lines_of_code(text: &str) -> usize {
    let code = text
        .find("\n#[cfg(test)]")
        .map_or(text, |at| &text[..at + 1]);
    code.lines().count()
}

#[test]
fn no_file_outside_tests_has_more_than_600_lines_of_code() {
    let mut long = Vec::new();
    for path in code_files() {
        let file = path
            .strip_prefix(src())
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("reading source");
        let lines = lines_of_code(&text);
        if lines > MAX_FILE_LINES {
            long.push(format!("src/{file}: {lines} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "files with more than {MAX_FILE_LINES} lines of code; split them along a seam:\n  {}",
        long.join("\n  ")
    );
}

/// The file-length counter itself: test modules do not count, a file without one counts
/// whole, and one line past the limit is over it.
#[test]
fn the_file_length_counter_stops_at_the_test_module() {
    let code = "//! x\nfn a() {}\n".repeat(300);
    assert_eq!(lines_of_code(&code), MAX_FILE_LINES);
    let over = format!("{code}fn b() {{}}\n");
    assert_eq!(lines_of_code(&over), MAX_FILE_LINES + 1);
    let with_tests = format!(
        "{code}#[cfg(test)]\nmod tests {{\n{}}}\n",
        "    \n".repeat(50)
    );
    assert_eq!(lines_of_code(&with_tests), MAX_FILE_LINES);
}
