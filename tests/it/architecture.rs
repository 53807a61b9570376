//! The layering, kept true: reads `src/` and fails on an import cycle
//! between top-level modules, on a reader importing a source, and on a store
//! importing anything but the shared vocabulary.
//!
//! A top-level module is `src/x.rs` or the folder `src/x/`; an edge `a -> b`
//! is a `crate::b` path (or `crate::{b, ..}`) in a's non-test code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Sources turn the outside world into data; they write to the stores.
const SOURCES: [&str; 2] = ["ingest", "collect"];
/// Readers read the stores; none may import a source.
const READERS: [&str; 5] = ["detect", "ratelimit", "capacity", "api", "metrics"];
/// Stores may import only these.
const STORE_MAY_IMPORT: [&str; 1] = ["event"];

type Edges = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code with `#[cfg(test)] mod … { … }` blocks and `//` comments removed.
fn without_tests_and_comments(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        code.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else {
            rest = "";
            break;
        };
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    code.push_str(rest);
    code.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Module names a piece of code reaches through `crate::`.
fn referenced_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inside = &group[..group.find('}').unwrap_or(group.len())];
            for part in inside.split(',') {
                found.insert(ident(part.trim()));
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
}

fn module_edges() -> Edges {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src/ is readable") {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.is_dir() {
            let mut files = Vec::new();
            rust_files(&path, &mut files);
            modules.insert(name, files);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            modules.insert(name, vec![path]);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(module, files)| {
            let targets = files
                .iter()
                .flat_map(|f| {
                    let text = std::fs::read_to_string(f).expect("source is readable");
                    referenced_modules(&without_tests_and_comments(&text))
                })
                .filter(|t| t != module && names.contains(t))
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// Every module that `from` reaches by following edges.
fn reachable(edges: &Edges, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        for next in edges.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let edges = module_edges();
    assert!(
        edges.len() > 10,
        "expected the crate's modules, got {edges:?}"
    );
    // The map, for `cargo test --test it architecture:: -- --nocapture`.
    for (module, targets) in &edges {
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        println!("{module} -> {}", targets.join(", "));
    }
    let cycles: Vec<String> = edges
        .iter()
        .flat_map(|(a, targets)| targets.iter().map(move |b| (a, b)))
        .filter(|(a, b)| reachable(&edges, b).contains(*a))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    assert!(cycles.is_empty(), "edges on an import cycle: {cycles:?}");
}

#[test]
fn readers_never_import_a_source() {
    let edges = module_edges();
    for reader in READERS {
        let imports = edges
            .get(reader)
            .unwrap_or_else(|| panic!("no module {reader}"));
        let reached = reachable(&edges, reader);
        for source in SOURCES {
            assert!(
                !imports.contains(source),
                "{reader} imports the source {source}"
            );
            assert!(
                !reached.contains(source),
                "{reader} reaches the source {source} through {imports:?}"
            );
        }
    }
}

#[test]
fn stores_import_only_the_shared_vocabulary() {
    let edges = module_edges();
    let imports = edges.get("store").expect("a store module");
    for m in imports {
        assert!(STORE_MAY_IMPORT.contains(&m.as_str()), "store imports {m}");
    }
}

#[test]
fn the_scanner_sees_imports_and_skips_tests() {
    let code = "use crate::{store::Store, event};\nfn f() { crate::detect::x(); } // crate::api\n\
                #[cfg(test)]\nmod tests { use crate::collect; fn g() { {} } }\nuse crate::http;";
    let found = referenced_modules(&without_tests_and_comments(code));
    let found: Vec<&str> = found.iter().map(String::as_str).collect();
    assert_eq!(found, ["detect", "event", "http", "store"]);
}
