//! The layout's rules, checked on the source text:
//! - no import cycle between the library's top-level modules (`use crate::…` lines and
//!   `crate::…` paths in code both count; comments do not);
//! - the library never imports the command line (`src/cli/` belongs to the binary).
//!
//! A cycle is reported with the file behind each of its edges, so the fix is findable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's top-level modules, as `lib.rs` declares them.
fn top_level_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

/// The source without comment lines (doc comments name modules freely).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module names a piece of code refers to through `crate::`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `switchyard::crate::` cannot occur; `$crate::` in macros is not ours.
        let before = &rest[..at];
        rest = &rest[at + "crate::".len()..];
        if before.ends_with('$') || before.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b, c::{d, e}}`: the first segment of each top-level entry.
            let mut depth = 0;
            let mut entry_start = true;
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.insert(name);
                        entry_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Edges between top-level modules, each with one file that makes it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn library_graph() -> Graph {
    let modules = top_level_modules();
    let root = src();
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeMap::new()))
        .collect();
    for path in all {
        let rel = path.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = first.trim_end_matches(".rs").to_owned();
        if !modules.contains(&top) {
            continue; // lib.rs, main.rs, cli/: not library modules
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for name in referenced(&code(&text)) {
            if name != top && modules.contains(&name) {
                graph
                    .get_mut(&top)
                    .unwrap()
                    .entry(name)
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph[v].keys() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = library_graph();
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    // A scanner that found nothing would pass vacuously.
    assert!(
        graph.len() >= 15 && edges >= 40,
        "the scan found {} modules and {edges} edges; it is not reading the sources",
        graph.len()
    );
    let found = cycles(&graph);
    let mut report = String::new();
    for component in &found {
        report.push_str(&format!("cycle among {component:?}:\n"));
        for a in component {
            for (b, file) in &graph[a] {
                if component.contains(b) {
                    report.push_str(&format!("  {a} -> {b}  (src/{file})\n"));
                }
            }
        }
    }
    assert!(found.is_empty(), "import cycles:\n{report}");
    println!(
        "architecture: {} top-level modules, {edges} edges, no cycle",
        graph.len()
    );
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let mut g: Graph = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")] {
        g.entry(a.into())
            .or_default()
            .insert(b.into(), "x.rs".into());
        g.entry(b.into()).or_default();
    }
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        referenced("use crate::{config::X, model::{A, B}};\nlet x = crate::pool::Pools::new();"),
        ["config", "model", "pool"].map(String::from).into()
    );
}

#[test]
fn the_library_does_not_import_the_command_line() {
    let root = src();
    let lib = std::fs::read_to_string(root.join("lib.rs")).unwrap();
    assert!(
        !top_level_modules().contains("cli"),
        "lib.rs declares the cli module"
    );
    let main = std::fs::read_to_string(root.join("main.rs")).unwrap();
    assert!(main.contains("mod cli;"), "main.rs owns the cli module");
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut checked = 0;
    for path in all {
        let rel = path.strip_prefix(&root).unwrap();
        if rel.starts_with("cli") || rel == Path::new("main.rs") {
            continue;
        }
        let text = code(&std::fs::read_to_string(&path).unwrap());
        assert!(
            !referenced(&text).contains("cli"),
            "src/{} imports the command line",
            rel.display()
        );
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} library files were checked");
    assert!(lib.contains("pub mod dispatch;"));
}
