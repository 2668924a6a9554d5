//! The documentation cannot drift from the code: links and anchors resolve, the config
//! reference lists exactly the keys the code accepts, and every command block marked
//! `<!-- runnable -->` runs against the real binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use serde_reflection::{ContainerFormat, Format, Registry, Tracer, TracerConfig};
use wsgate::config::FileConfig;

/// The marker that makes the next fenced `sh` block a command CI runs.
const RUNNABLE: &str = "<!-- runnable -->";
/// The marker of the reference file in docs/configuration.md.
const REFERENCE_CONFIG: &str = "<!-- reference-config -->";
/// How long one runnable block may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page in docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/ exists");
    for entry in docs {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// What the tests need from one Markdown page.
#[derive(Default)]
struct Page {
    /// GitHub heading anchors, duplicates numbered as GitHub does.
    anchors: BTreeSet<String>,
    /// Link destinations, as written.
    links: Vec<String>,
    /// Fenced code blocks: (info string, text, the HTML comment just before it).
    blocks: Vec<CodeBlock>,
    /// `### `[table]`` sections: table path → keys named in the first column of its rows.
    key_rows: BTreeMap<String, Vec<String>>,
}

struct CodeBlock {
    info: String,
    text: String,
    marker: Option<String>,
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn parse(text: &str) -> Page {
    let mut page = Page::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    let mut table_section: Option<String> = None;
    let mut block: Option<(String, String)> = None;
    let mut marker: Option<String> = None;
    let (mut in_head, mut cell_index, mut first_cell) = (false, 0usize, None::<String>);
    for event in Parser::new_ext(text, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                let text = heading.take().unwrap_or_default();
                let base = slug(&text);
                let n = seen.entry(base.clone()).or_insert(0);
                page.anchors.insert(if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                });
                *n += 1;
                // `[table]` and `[[table]]` headings open a section of key rows.
                let t = text.trim();
                table_section = (t.starts_with('[') && t.ends_with(']'))
                    .then(|| t.trim_matches(|c| c == '[' || c == ']').to_owned());
                marker = None;
            }
            Event::Text(s) | Event::Code(s) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&s);
                }
                if let Some((_, b)) = block.as_mut() {
                    b.push_str(&s);
                }
                if !in_head && cell_index == 0 {
                    if let Some(c) = first_cell.as_mut() {
                        c.push_str(&s);
                    }
                }
            }
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => page.links.push(dest_url.to_string()),
            Event::Html(s) | Event::InlineHtml(s) => {
                let s = s.trim();
                if s.starts_with("<!--") {
                    marker = Some(s.to_owned());
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                let info = match kind {
                    CodeBlockKind::Fenced(info) => info.to_string(),
                    CodeBlockKind::Indented => String::new(),
                };
                block = Some((info, String::new()));
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((info, text)) = block.take() {
                    page.blocks.push(CodeBlock {
                        info,
                        text,
                        marker: marker.take(),
                    });
                }
            }
            Event::Start(Tag::TableHead) => in_head = true,
            Event::End(TagEnd::TableHead) => in_head = false,
            Event::Start(Tag::TableRow) => {
                cell_index = 0;
                first_cell = Some(String::new());
            }
            Event::End(TagEnd::TableCell) => cell_index += 1,
            Event::End(TagEnd::TableRow) => {
                if let (Some(section), Some(key)) = (&table_section, first_cell.take()) {
                    page.key_rows.entry(section.clone()).or_default().push(key);
                }
            }
            Event::Start(Tag::Paragraph) => marker = None,
            _ => {}
        }
    }
    page
}

/// Resolve `dest` (relative to `from`) inside the repository, or say why not.
fn resolve(from: &Path, dest: &str) -> Result<PathBuf, String> {
    let joined = from.parent().expect("page has a directory").join(dest);
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if !out.starts_with(root()) {
        return Err("leaves the repository (GitHub cannot show it)".into());
    }
    if !out.exists() {
        return Err("no such file".into());
    }
    Ok(out)
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut parsed: BTreeMap<PathBuf, Page> = BTreeMap::new();
    let mut broken = Vec::new();
    let mut checked = 0;
    // README.md, docs/, deploy/README.md and certs/README.md are checked link by link;
    // other pages they link to are only parsed for their anchors.
    let mut checked_pages = pages();
    checked_pages.extend(["deploy/README.md", "certs/README.md"].map(|p| root().join(p)));
    for path in checked_pages {
        if !parsed.contains_key(&path) {
            let page = parse(&read(&path));
            parsed.insert(path.clone(), page);
        }
        for dest in parsed[&path].links.clone() {
            checked += 1;
            if dest.contains("://") || dest.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match dest.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (dest.as_str(), None),
            };
            let target = if file.is_empty() {
                path.clone()
            } else {
                match resolve(&path, file) {
                    Ok(t) => t,
                    Err(why) => {
                        broken.push(format!("{}: {dest}: {why}", rel(&path)));
                        continue;
                    }
                }
            };
            let Some(anchor) = anchor else { continue };
            if target.extension().is_none_or(|e| e != "md") {
                broken.push(format!(
                    "{}: {dest}: anchor into a non-Markdown file",
                    rel(&path)
                ));
                continue;
            }
            if !parsed.contains_key(&target) {
                let page = parse(&read(&target));
                parsed.insert(target.clone(), page);
            }
            if !parsed[&target].anchors.contains(anchor) {
                broken.push(format!(
                    "{}: {dest}: no heading with anchor #{anchor} in {}",
                    rel(&path),
                    rel(&target)
                ));
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser reading the pages?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// README's table of contents lists every page in docs/, and every page links back to it.
#[test]
fn every_page_is_in_the_table_of_contents_and_links_back() {
    let readme = parse(&read(&root().join("README.md")));
    let mut problems = Vec::new();
    for page in pages()
        .into_iter()
        .filter(|p| p.starts_with(root().join("docs")))
    {
        let name = rel(&page);
        if !readme
            .links
            .iter()
            .any(|l| l.split('#').next() == Some(name.as_str()))
        {
            problems.push(format!(
                "{name}: not linked from README.md (add a row to its table of contents)"
            ));
        }
        let links = parse(&read(&page)).links;
        if !links.iter().any(|l| l == "../README.md#documentation") {
            problems.push(format!(
                "{name}: no link back to the table of contents, [← wsgate README: table of contents](../README.md#documentation)"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every key path the config structs accept (`route.auth.jwt.issuer`) and every table
/// (`[route.auth.jwt]`), read from the serde derives themselves, so a new field shows up
/// here without anyone listing it.
fn code_keys() -> BTreeSet<String> {
    let mut tracer = Tracer::new(TracerConfig::default());
    tracer
        .trace_simple_type::<FileConfig>()
        .expect("FileConfig can be traced");
    // Enum variants are not keys: an incomplete enum trace does not matter here.
    let registry = tracer.registry_unchecked();
    let mut keys = BTreeSet::new();
    walk(&registry, "FileConfig", "", &mut keys);
    assert!(keys.len() > 40, "only {} keys traced: {keys:?}", keys.len());
    keys
}

fn walk(registry: &Registry, name: &str, prefix: &str, keys: &mut BTreeSet<String>) {
    let Some(ContainerFormat::Struct(fields)) = registry.get(name) else {
        panic!("{name} is not a struct in the trace")
    };
    for field in fields {
        let path = if prefix.is_empty() {
            field.name.clone()
        } else {
            format!("{prefix}.{}", field.name)
        };
        let mut format = &field.value;
        while let Format::Option(inner) | Format::Seq(inner) = format {
            format = inner;
        }
        match format {
            Format::TypeName(t) if matches!(registry.get(t), Some(ContainerFormat::Struct(_))) => {
                keys.insert(format!("[{path}]"));
                walk(registry, t, &path, keys);
            }
            _ => {
                keys.insert(path);
            }
        }
    }
}

/// The keys and tables of a TOML document, in the same form as `code_keys`.
fn toml_keys(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => {
                keys.insert(format!("[{path}]"));
                toml_keys(t, &path, keys);
            }
            toml::Value::Array(items)
                if items.iter().all(|i| i.is_table()) && !items.is_empty() =>
            {
                keys.insert(format!("[{path}]"));
                for item in items {
                    if let toml::Value::Table(t) = item {
                        toml_keys(t, &path, keys);
                    }
                }
            }
            _ => {
                keys.insert(path);
            }
        }
    }
}

fn difference(what: &str, code: &BTreeSet<String>, docs: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for k in code.difference(docs) {
        problems.push(format!("{k}: accepted by the code, missing from {what}"));
    }
    for k in docs.difference(code) {
        problems.push(format!("{k}: in {what}, unknown to the code"));
    }
    problems
}

#[test]
fn configuration_reference_lists_exactly_the_keys_the_code_accepts() {
    let code = code_keys();
    let page = parse(&read(&root().join("docs/configuration.md")));

    // The key tables: one `### `[table]`` section per table, one row per key.
    let mut rows = BTreeSet::new();
    for (table, keys) in &page.key_rows {
        rows.insert(format!("[{table}]"));
        for key in keys {
            let key = key.trim();
            assert!(
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "docs/configuration.md, [{table}]: first column {key:?} is not a key"
            );
            rows.insert(format!("{table}.{key}"));
        }
    }
    let mut problems = difference("the key tables of docs/configuration.md", &code, &rows);

    // The reference file: it must deserialize, and set every key.
    let reference: Vec<_> = page
        .blocks
        .iter()
        .filter(|b| b.marker.as_deref() == Some(REFERENCE_CONFIG))
        .collect();
    assert_eq!(
        reference.len(),
        1,
        "one {REFERENCE_CONFIG} block in docs/configuration.md"
    );
    let text = &reference[0].text;
    if let Err(e) = toml::from_str::<FileConfig>(text) {
        panic!("the reference file in docs/configuration.md does not parse: {e}");
    }
    let table: toml::Table = toml::from_str(text).expect("reference is TOML");
    let mut set = BTreeSet::new();
    toml_keys(&table, "", &mut set);
    problems.extend(difference(
        "the reference file in docs/configuration.md",
        &code,
        &set,
    ));

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Guards the drift check itself: a key the structs do not have is caught.
#[test]
fn an_undocumented_or_unknown_key_is_caught() {
    let code = code_keys();
    let mut docs = code.clone();
    docs.remove("timeouts.pong_timeout_secs");
    docs.insert("timeouts.pong_timeout".into());
    let problems = difference("x", &code, &docs);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

/// Runs one block under bash with the freshly built `wsgate` first on PATH, from the
/// repository root, killed after RUN_LIMIT.
fn run_block(page: &Path, block: &CodeBlock) -> Result<(), String> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wsgate"));
    let bin_dir = bin.parent().expect("binary directory");
    let path = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH joins");
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block.text])
        .current_dir(root())
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting bash: {e}"))?;
    let deadline = Instant::now() + RUN_LIMIT;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{}: still running after {RUN_LIMIT:?}:\n{}",
                    rel(page),
                    block.text
                ));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}\n{}\nstdout:\n{}\nstderr:\n{}",
            rel(page),
            out.status,
            block.text,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_runnable_command_block_runs() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for path in pages() {
        for block in parse(&read(&path)).blocks {
            if block.marker.as_deref() != Some(RUNNABLE) {
                continue;
            }
            assert!(
                matches!(block.info.as_str(), "sh" | "bash"),
                "{}: a runnable block must be ```sh, not ```{}",
                rel(&path),
                block.info
            );
            ran += 1;
            if let Err(e) = run_block(&path, &block) {
                failures.push(e);
            }
        }
    }
    assert!(ran >= 2, "only {ran} runnable blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// README's "Get started" gives the test command a new user runs; CI must run the same one.
#[test]
fn ci_runs_the_test_command_readme_gives() {
    let readme = parse(&read(&root().join("README.md")));
    let first = readme
        .blocks
        .iter()
        .find(|b| b.info == "sh")
        .expect("README has a sh block");
    let test_command = first
        .text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo test"))
        .expect("README's first sh block has the test command");
    let ci = read(&root().join(".ci/run"));
    assert!(
        ci.lines()
            .map(str::trim)
            .any(|l| l == format!("run {test_command}") || l == test_command),
        ".ci/run does not run README's test command `{test_command}`"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Close handshake: TCP backends"),
        "close-handshake-tcp-backends"
    );
    assert_eq!(
        slug("Conformance (Autobahn|Testsuite)"),
        "conformance-autobahntestsuite"
    );
    assert_eq!(slug("[route.auth.jwt]"), "routeauthjwt");
    assert_eq!(slug("60-second tour"), "60-second-tour");
    let page = parse("# A\n## A\n## A\n");
    assert!(["a", "a-1", "a-2"]
        .iter()
        .all(|a| page.anchors.contains(*a)));
}
