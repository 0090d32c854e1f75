//! Tidy checks on the workspace's source text: the server's layers (`api` → `actors` →
//! `store`), SQL written only in `store`, contract constants defined once in `protocol`, no source file over 800 lines, and
//! no import circle between the top-level modules of the server or of the agent.
//!
//! The checkers are plain functions over in-memory sources (unit-tested below on small
//! examples); `tidy::workspace::*` runs each of them on the real tree, one `#[test]` per check,
//! and fails with the list of offenders.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// The longest a non-test source file may be.
const MAX_LINES: usize = 800;

/// One source file: its path from the workspace root (with `/`) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: String,
    pub text: String,
}

impl Source {
    fn new(path: &str, text: &str) -> Source {
        Source {
            path: path.to_owned(),
            text: text.to_owned(),
        }
    }

    fn under(&self, dir: &str) -> bool {
        self.path.starts_with(dir)
    }
}

/// The `.rs` files under `dirs` (relative to `root`), sorted by path.
fn read_sources(root: &Path, dirs: &[&str]) -> Vec<Source> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Source>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(Source { path: rel, text });
            }
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        walk(root, &root.join(dir), &mut out);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

// ---------------------------------------------------------------------------------------------
// Reading Rust text: comments and string contents masked, `#[cfg(test)]` items left out.
// ---------------------------------------------------------------------------------------------

/// The text as chars, with comments blanked and, unless `keep_strings`, the contents of string
/// and char literals blanked too. Every char keeps its position and newlines stay, so offsets
/// and line numbers are those of the file.
fn mask(text: &str, keep_strings: bool) -> Vec<char> {
    let src: Vec<char> = text.chars().collect();
    let mut out = src.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(src.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        let next = src.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = src[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(src.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < src.len() && depth > 0 {
                if src[j] == '/' && src.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if src[j] == '*' && src.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && matches!(next, Some('"') | Some('#'))
            && (i == 0
                || !is_ident(src[i - 1])
                || (src[i - 1] == 'b' && (i == 1 || !is_ident(src[i - 2]))))
        {
            // A raw string r"…" or r#"…"# (or a raw byte string, br"…").
            let hashes = src[i + 1..].iter().take_while(|&&c| c == '#').count();
            let open = i + 1 + hashes;
            if src.get(open) != Some(&'"') {
                i += 1;
                continue;
            }
            let mut j = open + 1;
            while j < src.len() {
                if src[j] == '"' && src[j + 1..].iter().take_while(|&&c| c == '#').count() >= hashes
                {
                    break;
                }
                j += 1;
            }
            if !keep_strings {
                blank(&mut out, open + 1, j);
            }
            i = j + 1 + hashes;
        } else if c == '"' {
            let mut j = i + 1;
            while j < src.len() && src[j] != '"' {
                j += if src[j] == '\\' { 2 } else { 1 };
            }
            if !keep_strings {
                blank(&mut out, i + 1, j);
            }
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}'), or a lifetime ('a) left as it is.
            let end = if next == Some('\\') {
                src[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map(|p| i + 2 + p)
            } else if src.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    if !keep_strings {
                        blank(&mut out, i + 1, end);
                    }
                    i = end + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The position just past the `}` matching the `{` at `open`.
fn matching_brace(code: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (i, &c) in code.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

fn find(code: &[char], pattern: &str, from: usize) -> Option<usize> {
    let pat: Vec<char> = pattern.chars().collect();
    (from..code.len().saturating_sub(pat.len() - 1)).find(|&i| code[i..].starts_with(&pat))
}

/// The ranges of `#[cfg(test)]` items (the attribute through the item's `;` or closing `}`).
fn test_items(masked: &[char]) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(at) = find(masked, "#[cfg(test)]", from) {
        let rest = at + "#[cfg(test)]".len();
        let brace = masked[rest..].iter().position(|&c| c == '{');
        let semi = masked[rest..].iter().position(|&c| c == ';');
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => rest + s + 1,
            (Some(b), _) => matching_brace(masked, rest + b),
            (None, Some(s)) => rest + s + 1,
            (None, None) => masked.len(),
        };
        ranges.push((at, end));
        from = end;
    }
    ranges
}

/// A file's code as the checks read it: `code` with comments and string contents blanked,
/// `text` with only comments blanked (for literals), both without `#[cfg(test)]` items.
struct Code {
    code: Vec<char>,
    text: Vec<char>,
}

impl Code {
    fn of(source: &str) -> Code {
        let mut code = mask(source, false);
        let mut text = mask(source, true);
        for (from, to) in test_items(&code.clone()) {
            for buf in [&mut code, &mut text] {
                for c in &mut buf[from..to] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
            }
        }
        Code { code, text }
    }

    fn line_of(&self, pos: usize) -> usize {
        1 + self.code[..pos].iter().filter(|&&c| c == '\n').count()
    }

    /// The trimmed text of line `line` (1-based), comments blanked, for messages.
    fn line_text(&self, line: usize) -> String {
        let text: String = self.text.iter().collect();
        text.lines()
            .nth(line - 1)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Identifier tokens with their positions.
    fn idents(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.code.len() {
            if is_ident(self.code[i]) && (i == 0 || !is_ident(self.code[i - 1])) {
                let len = self.code[i..].iter().take_while(|&&c| is_ident(c)).count();
                out.push((i, self.code[i..i + len].iter().collect()));
                i += len;
            } else {
                i += 1;
            }
        }
        out
    }

    /// The next non-space position at or after `at`.
    fn skip_space(&self, mut at: usize) -> usize {
        while at < self.code.len() && self.code[at].is_whitespace() {
            at += 1;
        }
        at
    }

    fn path_sep_at(&self, at: usize) -> bool {
        let at = self.skip_space(at);
        self.code[at..].starts_with(&[':', ':'])
    }
}

/// The top-level modules a file names through `crate::X` (or `$crate::X`), with the line of
/// each mention; `use crate::{a, b::c}` names `a` and `b`.
fn crate_refs(code: &Code) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (pos, ident) in code.idents() {
        if ident != "crate" || !code.path_sep_at(pos + 5) {
            continue;
        }
        let after = code.skip_space(code.skip_space(pos + 5) + 2);
        let line = code.line_of(pos);
        if code.code.get(after) == Some(&'{') {
            // A group: the first name of each top-level item.
            let end = matching_brace(&code.code, after);
            let (mut depth, mut item_start) = (0, true);
            for i in after + 1..end.saturating_sub(1) {
                let c = code.code[i];
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && is_ident(c) => {
                        let name: String = code.code[i..]
                            .iter()
                            .take_while(|&&c| is_ident(c))
                            .collect();
                        if name != "self" {
                            out.push((name, code.line_of(i)));
                        }
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = code.code[after..]
                .iter()
                .take_while(|&&c| is_ident(c))
                .collect();
            if !name.is_empty() {
                out.push((name, line));
            }
        }
    }
    out
}

/// Uses of the external crate `name` as a path root (`name::…`, `use name;`).
fn extern_refs(code: &Code, names: &[&str]) -> Vec<(String, usize)> {
    let idents = code.idents();
    let mut out = Vec::new();
    for (k, (pos, ident)) in idents.iter().enumerate() {
        if !names.contains(&ident.as_str()) {
            continue;
        }
        // Not a path segment further in (`foo::awc`), and not a field or method (`x.awc`).
        let before = code.code[..*pos]
            .iter()
            .rev()
            .find(|c| !c.is_whitespace())
            .copied();
        if matches!(before, Some(':') | Some('.')) {
            continue;
        }
        let used = code.path_sep_at(pos + ident.len())
            || (k > 0 && matches!(idents[k - 1].1.as_str(), "use" | "crate"));
        if used {
            out.push((ident.clone(), code.line_of(*pos)));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The checks: each answers its offenders, one readable line each; empty means it passes.
// ---------------------------------------------------------------------------------------------

/// The server's layers: `store` imports no web framework and no upper layer, `actors` does not
/// import `api`. The three folders must exist.
pub fn layer_offenders(sources: &[Source]) -> Vec<String> {
    const WEB: &[&str] = &["actix", "actix_web", "actix_web_actors", "awc"];
    let mut out = Vec::new();
    for dir in ["api", "actors", "store"] {
        let prefix = format!("server/src/{dir}/");
        if !sources.iter().any(|s| s.under(&prefix)) {
            out.push(format!(
                "{prefix} does not exist: the server is not split into api/, actors/ and store/ yet"
            ));
        }
    }
    for source in sources {
        let (forbidden_modules, web): (&[&str], bool) = if source.under("server/src/store/") {
            (&["api", "actors"], true)
        } else if source.under("server/src/actors/") {
            (&["api"], false)
        } else {
            continue;
        };
        let code = Code::of(&source.text);
        for (module, line) in crate_refs(&code) {
            if forbidden_modules.contains(&module.as_str()) {
                out.push(format!(
                    "{}:{line}: imports crate::{module} (`{}`)",
                    source.path,
                    code.line_text(line)
                ));
            }
        }
        if web {
            for (name, line) in extern_refs(&code, WEB) {
                out.push(format!(
                    "{}:{line}: store code uses `{name}` (`{}`)",
                    source.path,
                    code.line_text(line)
                ));
            }
        }
    }
    out
}

/// SQL outside the store: any use of `diesel` (its query DSL, connections, transactions) or of
/// the `schema` crate's tables in the server's `api` or `actors`. Handlers and actors reach the
/// database only through `store` functions, so a race closed by a transaction there stays
/// closed.
pub fn sql_offenders(sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    for source in sources {
        if !(source.under("server/src/api/")
            || source.under("server/src/actors/")
            || source.under("server/src/admin/"))
        {
            continue;
        }
        let code = Code::of(&source.text);
        for (name, line) in extern_refs(&code, &["diesel", "schema"]) {
            out.push(format!(
                "{}:{line}: uses `{name}` outside store (`{}`)",
                source.path,
                code.line_text(line)
            ));
        }
    }
    out
}

/// The close codes of the device and dashboard sockets, defined in `protocol`.
const CLOSE_CODES: &[&str] = &["4000", "4001", "4401", "4408", "4429"];
/// The first line of a signed firmware manifest.
const MANIFEST_HEADER: &str = "factory-firmware-manifest-v1";

/// What a function of this name defines, if it is one of the contract's rules.
fn contract_fn(name: &str) -> Option<&'static str> {
    let hex = ["hex", "to_hex", "encode_hex", "hex_encode", "hex_string"];
    let id_check = ["validate_", "check_", "valid_", "is_valid_", "verify_"];
    if hex.contains(&name) {
        Some("a hex encoder")
    } else if name.contains("manifest") && name.contains("bytes") {
        Some("the signed-manifest bytes")
    } else if name.contains("device_id") && id_check.iter().any(|p| name.starts_with(p)) {
        Some("the device-id rule")
    } else {
        None
    }
}

/// Contract constants and rules defined in the server or the agent instead of `protocol`: hex
/// encoders, the signed-manifest bytes and header, the device-id rule, `enum ErrorCode`, the
/// socket close codes. A function whose body calls into `protocol::` only delegates, and
/// `#[cfg(test)]` items do not count.
pub fn contract_offenders(sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    for source in sources {
        // Tests may spell the contract out on purpose, to pin it independently of the code.
        if !(source.under("server/src/") || source.under("agent/src/")) || test_only(&source.path) {
            continue;
        }
        let code = Code::of(&source.text);
        let idents = code.idents();
        let mut flagged_lines = BTreeSet::new();
        let mut flag = |line: usize, what: String, out: &mut Vec<String>| {
            if flagged_lines.insert(line) {
                out.push(format!(
                    "{}:{line}: {what} (`{}`)",
                    source.path,
                    code.line_text(line)
                ));
            }
        };
        for (k, (pos, ident)) in idents.iter().enumerate() {
            let next = idents.get(k + 1).map(|(_, n)| n.as_str());
            match (ident.as_str(), next) {
                ("fn", Some(name)) => {
                    let Some(what) = contract_fn(name) else {
                        continue;
                    };
                    // The body, unless this is a declaration without one.
                    let rest = &code.code[*pos..];
                    let body = match (
                        rest.iter().position(|&c| c == '{'),
                        rest.iter().position(|&c| c == ';'),
                    ) {
                        (Some(b), Some(s)) if s < b => continue,
                        (Some(b), _) => {
                            let open = pos + b;
                            code.code[open..matching_brace(&code.code, open)]
                                .iter()
                                .collect::<String>()
                        }
                        _ => continue,
                    };
                    if !body.contains("protocol::") {
                        flag(
                            code.line_of(*pos),
                            format!("{what} `fn {name}` belongs in protocol"),
                            &mut out,
                        );
                    }
                }
                ("enum", Some("ErrorCode")) => flag(
                    code.line_of(*pos),
                    "`enum ErrorCode` belongs in protocol".to_owned(),
                    &mut out,
                ),
                ("const", Some(name @ ("MANIFEST_HEADER" | "MAX_DEVICE_ID_LEN"))) => flag(
                    code.line_of(*pos),
                    format!("`const {name}` belongs in protocol"),
                    &mut out,
                ),
                _ => {}
            }
        }
        // Close codes: such a literal in a `const` or on a line about closing.
        let text: String = code.code.iter().collect();
        for (n, line) in text.lines().enumerate() {
            let words: Vec<&str> = line.split(|c: char| !is_ident(c)).collect();
            let Some(number) = words.iter().find(|w| {
                CLOSE_CODES.contains(w) || CLOSE_CODES.iter().any(|c| **w == format!("{c}u16"))
            }) else {
                continue;
            };
            // A `u16` constant is a close code whatever its name; a timeout of 4000 ms is not.
            let about_closing = line.to_lowercase().contains("close")
                || (words.contains(&"const") && words.contains(&"u16"));
            if about_closing {
                flag(
                    n + 1,
                    format!("close code {} belongs in protocol", &number[..4]),
                    &mut out,
                );
            }
        }
        // The manifest header, spelled out.
        let text: String = code.text.iter().collect();
        for (n, line) in text.lines().enumerate() {
            if line.contains(MANIFEST_HEADER) {
                flag(
                    n + 1,
                    "the firmware manifest header belongs in protocol".to_owned(),
                    &mut out,
                );
            }
        }
    }
    out
}

/// Whether a file holds only tests: named `tests.rs`, or in a `tests` folder.
fn test_only(path: &str) -> bool {
    path.split('/').any(|part| part == "tests") || path.ends_with("/tests.rs")
}

/// Non-test source files of the server, the agent and `protocol` longer than `MAX_LINES`,
/// longest first.
pub fn size_offenders(sources: &[Source]) -> Vec<String> {
    let mut long: Vec<(usize, &str)> = sources
        .iter()
        .filter(|s| {
            ["server/src/", "agent/src/", "protocol/src/"]
                .iter()
                .any(|d| s.under(d))
        })
        .filter(|s| !test_only(&s.path))
        .map(|s| (s.text.lines().count(), s.path.as_str()))
        .filter(|(n, _)| *n > MAX_LINES)
        .collect();
    long.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    long.into_iter()
        .map(|(n, path)| format!("{path}: {n} lines (at most {MAX_LINES})"))
        .collect()
}

/// Edges `from -> to` between modules, each with where the first import was seen.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The graph of `crate::X` imports between the top-level modules (files or folders) of the
/// crate in `src_dir`; the crate root (`lib.rs`, `main.rs`) is left out.
fn module_graph(sources: &[Source], src_dir: &str) -> Graph {
    let module_of = |path: &str| -> Option<String> {
        let rest = path.strip_prefix(src_dir)?;
        match rest.split_once('/') {
            Some((dir, _)) => Some(dir.to_owned()),
            None if rest == "lib.rs" || rest == "main.rs" => None,
            None => Some(rest.strip_suffix(".rs")?.to_owned()),
        }
    };
    let mut graph = Graph::new();
    for source in sources {
        if let Some(module) = module_of(&source.path) {
            graph.entry(module).or_default();
        }
    }
    for source in sources {
        // Test-only files may reach anywhere in their crate; the circles that matter are
        // between the modules that ship.
        if test_only(&source.path) {
            continue;
        }
        let Some(from) = module_of(&source.path) else {
            continue;
        };
        let code = Code::of(&source.text);
        for (to, line) in crate_refs(&code) {
            if to != from && graph.contains_key(&to) {
                graph
                    .get_mut(&from)
                    .expect("every module is a node")
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", source.path));
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph[v].keys() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out.sort();
    state.out
}

/// A shortest circle from `start` back to itself inside `component`.
fn shortest_circle(graph: &Graph, component: &[String], start: &str) -> Vec<String> {
    let inside: BTreeSet<&str> = component.iter().map(String::as_str).collect();
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].keys().map(String::as_str) {
            if w == start {
                let mut path = vec![v.to_owned()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    path.push(at.to_owned());
                }
                path.reverse();
                path.push(start.to_owned());
                return path;
            }
            if inside.contains(w) && !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("{start} is in a strongly connected component")
}

/// Import circles between the top-level modules of the server and of the agent: for each set
/// of modules that import each other, its members and one shortest circle with where each of
/// its imports is.
pub fn cycle_offenders(sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    for src_dir in ["server/src/", "agent/src/"] {
        let graph = module_graph(sources, src_dir);
        for component in circles(&graph) {
            let circle = shortest_circle(&graph, &component, &component[0]);
            let steps: Vec<String> = circle
                .windows(2)
                .map(|pair| format!("{} -> {} ({})", pair[0], pair[1], graph[&pair[0]][&pair[1]]))
                .collect();
            // Pairs that import each other directly: the first places to cut.
            let two_way: Vec<String> = component
                .iter()
                .flat_map(|a| component.iter().map(move |b| (a, b)))
                .filter(|(a, b)| a < b && graph[*a].contains_key(*b) && graph[*b].contains_key(*a))
                .map(|(a, b)| format!("{a} <-> {b}"))
                .collect();
            let two_way = if two_way.is_empty() {
                String::new()
            } else {
                format!("\n      two-way: {}", two_way.join(", "))
            };
            out.push(format!(
                "{src_dir}: {} modules import each other in a circle: {}{two_way}\n      e.g. {}",
                component.len(),
                component.join(", "),
                steps.join(", ")
            ));
        }
    }
    out
}

/// The failure message: what broke and every offender on its own line.
fn report(what: &str, offenders: &[String]) -> String {
    format!(
        "{what}: {} offender(s)\n  {}",
        offenders.len(),
        offenders.join("\n  ")
    )
}

/// The checks on the real tree.
mod workspace {
    use super::*;

    fn sources() -> Vec<Source> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sources = read_sources(&root, &["server/src", "agent/src", "protocol/src"]);
        assert!(
            sources.iter().any(|s| s.path == "server/src/lib.rs"),
            "no server sources under {}",
            root.display()
        );
        sources
    }

    #[test]
    fn server_layers_import_only_downwards() {
        let offenders = layer_offenders(&sources());
        assert!(
            offenders.is_empty(),
            "{}",
            report(
                "server layers (store must not import actix/awc, crate::api or crate::actors; \
                 actors must not import crate::api)",
                &offenders
            )
        );
    }

    #[test]
    fn only_the_store_writes_sql() {
        let offenders = sql_offenders(&sources());
        assert!(
            offenders.is_empty(),
            "{}",
            report(
                "SQL outside store (api and actors call store functions instead of diesel)",
                &offenders
            )
        );
    }

    #[test]
    fn contract_constants_are_defined_only_in_protocol() {
        let offenders = contract_offenders(&sources());
        assert!(
            offenders.is_empty(),
            "{}",
            report(
                "contract rules and constants defined outside protocol",
                &offenders
            )
        );
    }

    #[test]
    fn no_source_file_is_over_800_lines() {
        let offenders = size_offenders(&sources());
        assert!(
            offenders.is_empty(),
            "{}",
            report("source files over 800 lines", &offenders)
        );
    }

    #[test]
    fn no_import_circles_between_modules() {
        let offenders = cycle_offenders(&sources());
        assert!(
            offenders.is_empty(),
            "{}",
            report("import circles between top-level modules", &offenders)
        );
    }
}

/// The checkers on small in-memory trees.
mod checkers {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<Source> {
        files.iter().map(|(p, t)| Source::new(p, t)).collect()
    }

    const LAYERS: &[(&str, &str)] = &[
        ("server/src/api/mod.rs", "use crate::actors::Registry;\n"),
        ("server/src/actors/mod.rs", "use crate::store::Db;\n"),
        ("server/src/store/mod.rs", "use diesel::prelude::*;\n"),
    ];

    fn with(extra: (&'static str, &'static str)) -> Vec<Source> {
        let mut files = LAYERS.to_vec();
        files.push(extra);
        tree(&files)
    }

    #[test]
    fn masking_keeps_positions_and_drops_comments_strings_and_tests() {
        let code = Code::of(
            "let a = \"crate::api\"; // crate::api\n/* crate::api */ let c = '\"'; let e = br#\"crate::api\"#;\nlet d = crate::store::x;\n#[cfg(test)]\nmod tests { use crate::api; }\n",
        );
        let refs = crate_refs(&code);
        assert_eq!(refs, vec![("store".to_owned(), 3)]);
        assert_eq!(code.line_text(3), "let d = crate::store::x;");
    }

    #[test]
    fn crate_refs_reads_groups_and_plain_paths() {
        let code = Code::of(
            "use crate::{api::x, store::{a, b}, self, error::Error};\npub(crate) fn f() { crate :: actors::go(); }\n",
        );
        let names: Vec<String> = crate_refs(&code).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["api", "store", "error", "actors"]);
    }

    #[test]
    fn clean_layers_pass() {
        assert_eq!(layer_offenders(&tree(LAYERS)), Vec::<String>::new());
        // The web framework is fine above the store.
        let ok = with(("server/src/api/routes.rs", "use actix_web::web;\n"));
        assert!(layer_offenders(&ok).is_empty());
    }

    #[test]
    fn missing_layer_folders_fail() {
        let flat = tree(&[("server/src/devices.rs", "use crate::db::Db;\n")]);
        let offenders = layer_offenders(&flat);
        assert_eq!(offenders.len(), 3, "{offenders:?}");
        assert!(offenders[2].starts_with("server/src/store/ does not exist"));
    }

    #[test]
    fn a_store_using_the_web_or_upper_layers_fails() {
        for (text, want) in [
            ("use actix_web::web;\n", "uses `actix_web`"),
            ("fn f() -> awc::Client { todo!() }\n", "uses `awc`"),
            ("use actix::prelude::*;\n", "uses `actix`"),
            (
                "use crate::{error::E, api::routes};\n",
                "imports crate::api",
            ),
            ("fn f() { crate::actors::go() }\n", "imports crate::actors"),
        ] {
            let offenders = layer_offenders(&with(("server/src/store/x.rs", text)));
            assert_eq!(offenders.len(), 1, "{text}: {offenders:?}");
            assert!(offenders[0].contains(want), "{text}: {offenders:?}");
            assert!(offenders[0].starts_with("server/src/store/x.rs:1:"));
        }
        // A mention in a comment or a string is no use, nor a field named so.
        let harmless =
            "// actix_web::web\nconst A: &str = \"crate::api\";\nfn f(s: S) { s.awc; }\n";
        assert!(layer_offenders(&with(("server/src/store/x.rs", harmless))).is_empty());
    }

    #[test]
    fn sql_outside_the_store_fails() {
        assert!(sql_offenders(&tree(LAYERS)).is_empty());
        for (path, text, want) in [
            (
                "server/src/api/devices.rs",
                "use diesel::prelude::*;\n",
                "uses `diesel`",
            ),
            (
                "server/src/api/mod.rs",
                "fn f(c: &mut C) { diesel::sql_query(\"SELECT 1\").execute(c); }\n",
                "uses `diesel`",
            ),
            (
                "server/src/actors/presence.rs",
                "use schema::schema::devices;\n",
                "uses `schema`",
            ),
        ] {
            let offenders = sql_offenders(&with((path, text)));
            assert_eq!(offenders.len(), 1, "{text}: {offenders:?}");
            assert!(offenders[0].contains(want), "{text}: {offenders:?}");
            assert!(offenders[0].starts_with(&format!("{path}:1:")));
        }
        // The store may, and a mention in a comment, a string or a test is no use.
        let harmless = "// diesel::update\nconst A: &str = \"schema::x\";\n#[cfg(test)]\nmod tests { use diesel::prelude::*; }\n";
        assert!(sql_offenders(&with(("server/src/api/x.rs", harmless))).is_empty());
    }

    #[test]
    fn actors_importing_the_api_fail() {
        let offenders = layer_offenders(&with((
            "server/src/actors/session.rs",
            "use actix::Actor;\nuse crate::api::error::ApiError;\n",
        )));
        assert_eq!(offenders.len(), 1, "{offenders:?}");
        assert!(offenders[0].starts_with("server/src/actors/session.rs:2: imports crate::api"));
    }

    #[test]
    fn contract_copies_fail_and_delegation_passes() {
        let copies = tree(&[
            (
                "server/src/firmware.rs",
                "pub fn hex(b: &[u8]) -> String { b.iter().map(|b| format!(\"{b:02x}\")).collect() }\n\
                 pub const MANIFEST_HEADER: &str = \"factory-firmware-manifest-v1\";\n\
                 pub fn manifest_bytes(v: &str) -> Vec<u8> { v.into() }\n",
            ),
            (
                "agent/src/config.rs",
                "fn check_device_id(id: &str) -> bool { id.len() < 9 }\n",
            ),
            ("server/src/error.rs", "pub enum ErrorCode { A }\n"),
            (
                "server/src/session.rs",
                "pub const CLOSE_FLOOD: u16 = 4429;\nconst GONE: u16 = 4000;\nctx.close(Some(CloseCode::Other(4401)));\n",
            ),
        ]);
        let offenders = contract_offenders(&copies);
        let want = [
            "server/src/firmware.rs:1: a hex encoder `fn hex`",
            "server/src/firmware.rs:2: `const MANIFEST_HEADER`",
            "server/src/firmware.rs:3: the signed-manifest bytes `fn manifest_bytes`",
            "agent/src/config.rs:1: the device-id rule `fn check_device_id`",
            "server/src/error.rs:1: `enum ErrorCode`",
            "server/src/session.rs:1: close code 4429",
            "server/src/session.rs:2: close code 4000",
            "server/src/session.rs:3: close code 4401",
        ];
        assert_eq!(offenders.len(), want.len(), "{offenders:#?}");
        for w in want {
            assert!(
                offenders.iter().any(|o| o.starts_with(w)),
                "{w} missing: {offenders:#?}"
            );
        }

        let clean = tree(&[
            (
                "server/src/firmware.rs",
                "pub use protocol::firmware::{hex, manifest_bytes};\n\
                 pub fn validate_device_id(id: &str) -> Result<(), E> { protocol::device::check_id(id).map_err(E::from) }\n\
                 const TIMEOUT_MS: u64 = 4000;\nlet close = protocol::close::FLOOD;\n",
            ),
            (
                "agent/src/updater.rs",
                "fn f() { sleep(Duration::from_millis(4429)); }\n#[cfg(test)]\nmod tests {\n    fn hex(b: &[u8]) -> String { todo!() }\n}\n",
            ),
            // protocol itself is where they belong.
            ("protocol/src/firmware.rs", "pub fn hex(b: &[u8]) -> String { todo!() }\npub const CLOSE_FLOOD: u16 = 4429;\n"),
        ]);
        assert_eq!(contract_offenders(&clean), Vec::<String>::new());
    }

    #[test]
    fn long_files_fail_unless_test_only() {
        let long = "x\n".repeat(MAX_LINES + 1);
        let limit = "x\n".repeat(MAX_LINES);
        let sources = tree(&[
            ("server/src/big.rs", long.as_str()),
            ("server/src/fits.rs", limit.as_str()),
            ("agent/src/store/tests.rs", long.as_str()),
            ("protocol/src/tests/cases.rs", long.as_str()),
            ("integration-tests/src/lib.rs", long.as_str()),
        ]);
        assert_eq!(
            size_offenders(&sources),
            ["server/src/big.rs: 801 lines (at most 800)"]
        );
    }

    #[test]
    fn a_graph_without_circles_passes() {
        let sources = tree(&[
            (
                "server/src/lib.rs",
                "pub mod api; pub mod store; use crate::api::x;\n",
            ),
            (
                "server/src/api/mod.rs",
                "use crate::actors::A;\nuse crate::store::Db;\n",
            ),
            (
                "server/src/api/routes.rs",
                "use crate::api::x; use crate::ROUTES;\n",
            ),
            ("server/src/actors/mod.rs", "use crate::store::Db;\n"),
            ("server/src/store/mod.rs", "use crate::error::E;\n"),
            ("server/src/error.rs", "use protocol::ErrorCode;\n"),
            ("agent/src/main.rs", "mod a; mod b; use crate::a::x;\n"),
            ("agent/src/a.rs", "use crate::b::y;\n"),
            ("agent/src/b.rs", "fn y() {}\n"),
        ]);
        assert_eq!(cycle_offenders(&sources), Vec::<String>::new());
    }

    #[test]
    fn a_graph_with_a_circle_fails_and_names_it() {
        let sources = tree(&[
            ("server/src/api/mod.rs", "use crate::actors::A;\n"),
            ("server/src/actors/mod.rs", "use crate::store::Db;\n"),
            ("server/src/store/mod.rs", "\nuse crate::{api::Json};\n"),
            ("server/src/error.rs", "use crate::store::Db;\n"),
            ("agent/src/a.rs", "use crate::b::y;\n"),
            ("agent/src/b.rs", "fn y() { crate::a::x() }\n"),
            ("agent/src/c.rs", "use crate::a::x;\n"),
        ]);
        let offenders = cycle_offenders(&sources);
        assert_eq!(offenders.len(), 2, "{offenders:#?}");
        assert!(
            offenders[0].starts_with(
                "server/src/: 3 modules import each other in a circle: actors, api, store"
            ),
            "{}",
            offenders[0]
        );
        assert!(
            offenders[0].contains(
                "actors -> store (server/src/actors/mod.rs:1), store -> api (server/src/store/mod.rs:2), api -> actors (server/src/api/mod.rs:1)"
            ),
            "{}",
            offenders[0]
        );
        assert!(
            offenders[1].starts_with("agent/src/: 2 modules import each other in a circle: a, b")
        );
    }

    #[test]
    fn shortest_circle_takes_the_short_way_round() {
        // a -> b -> a and a -> c -> d -> a: the circle shown is the short one.
        let sources = tree(&[
            ("agent/src/a.rs", "use crate::b::x; use crate::c::y;\n"),
            ("agent/src/b.rs", "use crate::a::x;\n"),
            ("agent/src/c.rs", "use crate::d::x;\n"),
            ("agent/src/d.rs", "use crate::a::x;\n"),
        ]);
        let offenders = cycle_offenders(&sources);
        assert_eq!(offenders.len(), 1);
        assert!(offenders[0].contains("4 modules"), "{}", offenders[0]);
        assert!(
            offenders[0].contains("\n      two-way: a <-> b\n"),
            "{}",
            offenders[0]
        );
        assert!(
            offenders[0].ends_with("e.g. a -> b (agent/src/a.rs:1), b -> a (agent/src/b.rs:1)"),
            "{}",
            offenders[0]
        );
    }

    #[test]
    fn the_report_lists_every_offender() {
        let text = report("files", &["a: 900 lines".into(), "b: 801 lines".into()]);
        assert_eq!(text, "files: 2 offender(s)\n  a: 900 lines\n  b: 801 lines");
    }
}
