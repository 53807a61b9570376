//! The layering, kept true: reads `src/` and fails on an import cycle
//! between top-level modules, on an import cycle between the files of one
//! module directory, on a reader importing a source, and on a store
//! importing anything but the shared vocabulary.
//!
//! A top-level module is `src/x.rs` or the folder `src/x/`; an edge `a -> b`
//! is a `crate::b` path (or `crate::{b, ..}`) in a's non-test code.
//!
//! Inside a module directory `src/d/`, the children are its files `x.rs`
//! (not `mod.rs`, which declares and re-exports them) and its folders `x/`;
//! an edge `a -> b` is any path in a's non-test code that resolves to
//! `crate::d::b…`, written from `crate::`, `super::` or `self::`, with
//! `{…}` groups expanded.

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

/// The module path of a source file: `src/api/query.rs` is `api::query`,
/// `src/api/mod.rs` is `api`, `src/lib.rs` is the crate root.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let mut path: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        path.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        path.pop();
    }
    path
}

/// The identifier at the start of `s`.
fn leading_ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Expands the path (or `use` tree) at the start of `rest`, below `prefix`,
/// into the module paths it names: `a::{b, c::d}` gives `prefix::a::b` and
/// `prefix::a::c::d`. A `self` item inside a group names the prefix itself.
fn expand_tree(prefix: &[String], rest: &str, out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    let mut rest = rest.trim_start();
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        expand_tree(&path, &group[start..i], out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_tree(&path, &group[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let ident = leading_ident(rest);
        if ident.is_empty() {
            break;
        }
        if ident != "self" {
            path.push(ident.to_owned());
        }
        match rest[ident.len()..].trim_start().strip_prefix("::") {
            Some(after) => rest = after.trim_start(),
            None => break,
        }
    }
    out.push(path);
}

/// Every module path that code in the module `module` names through
/// `crate::`, `super::` or `self::`, resolved to a path from the crate root.
fn referenced_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for keyword in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(keyword) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue; // part of a longer path, such as `super::super::`
            }
            let mut base = if keyword == "crate::" {
                Vec::new()
            } else {
                module.to_vec()
            };
            let mut rest = &code[at..];
            if let Some(after) = rest.strip_prefix("crate::") {
                rest = after;
            } else if let Some(after) = rest.strip_prefix("self::") {
                rest = after;
            } else {
                while let Some(after) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = after.trim_start();
                }
            }
            expand_tree(&base, rest, &mut found);
        }
    }
    found
}

/// For each module directory under `src/` (as `api`, `collect`, …), its
/// children and the edges between them.
fn directory_edges() -> BTreeMap<String, Edges> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Each directory's children: `x.rs` files (not `mod.rs`) and `x/` folders.
    let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let mut path = module_path(&src, file);
        if file.file_name().is_some_and(|n| n == "mod.rs") {
            // `src/d/x/mod.rs` makes `x` a child of `d`.
            if let Some(child) = path.pop() {
                children.entry(path).or_default().insert(child);
            }
        } else if let Some(child) = path.pop() {
            children.entry(path).or_default().insert(child);
        }
    }
    let mut edges: BTreeMap<String, Edges> = BTreeMap::new();
    for file in &files {
        let module = module_path(&src, file);
        let text = std::fs::read_to_string(file).expect("source is readable");
        let code = without_tests_and_comments(&text);
        // Only `mod.rs` is the directory itself; the crate root is the
        // top-level test's business, so directories start one level down.
        for depth in 1..module.len() {
            let dir = &module[..depth];
            let from = &module[depth];
            let Some(siblings) = children.get(dir) else {
                continue;
            };
            for target in referenced_paths(&module, &code) {
                if target.len() > depth
                    && target.starts_with(dir)
                    && &target[depth] != from
                    && siblings.contains(&target[depth])
                {
                    edges
                        .entry(dir.join("/"))
                        .or_default()
                        .entry(from.clone())
                        .or_default()
                        .insert(target[depth].clone());
                }
            }
        }
    }
    edges
}

/// The edges on an import cycle inside a module directory, as
/// `(directory, from, to)`.
fn cycles_inside_directories(edges: &BTreeMap<String, Edges>) -> Vec<(String, String, String)> {
    let mut cycles = Vec::new();
    for (dir, graph) in edges {
        for (a, targets) in graph {
            for b in targets {
                if reachable(graph, b).contains(a) {
                    cycles.push((dir.clone(), a.clone(), b.clone()));
                }
            }
        }
    }
    cycles
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

#[test]
fn no_import_cycle_inside_a_module_directory() {
    let edges = directory_edges();
    assert!(
        edges.contains_key("metrics") && edges.contains_key("collect"),
        "expected the crate's module directories, got {edges:?}"
    );
    // The map, for `cargo test --test it architecture:: -- --nocapture`.
    for (dir, graph) in &edges {
        for (module, targets) in graph {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            println!("{dir}/{module} -> {}", targets.join(", "));
        }
    }
    let cycles: Vec<String> = cycles_inside_directories(&edges)
        .into_iter()
        .map(|(dir, a, b)| format!("src/{dir}/: {a} -> {b}"))
        .collect();
    assert!(
        cycles.is_empty(),
        "edges on an import cycle inside a module directory: {cycles:?}"
    );
}

#[test]
fn the_directory_scanner_resolves_paths() {
    let module: Vec<String> = ["api", "query"].map(String::from).to_vec();
    let code = "use super::tenants::SortField;\nuse super::{detail, targets::{self, X}};\n\
                use crate::api::{pgbouncers::Y, self};\nfn f() { self::inner::g(); super::super::store::h(); }";
    let found: BTreeSet<String> = referenced_paths(&module, code)
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    let expected = [
        "api",
        "api::detail",
        "api::pgbouncers::Y",
        "api::targets",
        "api::targets::X",
        "api::tenants::SortField",
        "api::query::inner::g",
        "store::h",
    ];
    assert_eq!(found, expected.iter().map(|s| s.to_string()).collect());
}

#[test]
fn a_cycle_inside_a_directory_is_found_and_a_chain_is_not() {
    let graph = |pairs: &[(&str, &str)]| {
        let mut g = Edges::new();
        for (a, b) in pairs {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        BTreeMap::from([("d".to_string(), g)])
    };
    let chain = graph(&[("a", "b"), ("b", "c")]);
    assert!(cycles_inside_directories(&chain).is_empty());
    let three = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]);
    let found: Vec<String> = cycles_inside_directories(&three)
        .into_iter()
        .map(|(_, a, b)| format!("{a}->{b}"))
        .collect();
    assert_eq!(found, ["a->b", "b->c", "c->a"]);
}

/// The crate denies unsafe code (`Cargo.toml`, `src/lib.rs`) and one file,
/// `src/heap.rs`, allows it for its one FFI call (`malloc_trim`): no other
/// file of the crate, its tests, examples, benches or fuzz targets may.
#[test]
fn only_the_heap_module_allows_unsafe_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "benches", "fuzz", "macros"] {
        let dir = root.join(dir);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
    }
    // Spelled apart, so that this file does not match itself.
    let lints = ["allow", "expect"].map(|level| format!("{level}(unsafe_{})", "code"));
    let mut allowing: Vec<String> = files
        .iter()
        .filter(|path| !path.components().any(|c| c.as_os_str() == "target"))
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("a readable source file");
            lints.iter().any(|lint| text.contains(lint.as_str()))
        })
        .map(|path| {
            path.strip_prefix(root)
                .expect("under the crate")
                .display()
                .to_string()
        })
        .collect();
    allowing.sort();
    assert_eq!(allowing, ["src/heap.rs"]);
}
