//! The README's claims that can be checked stay equal to the code: the
//! number of named rules it states, and its endpoint table (every endpoint
//! listed once, nothing listed that is not served); and every relative link
//! in it and in `docs/overview.md` leads to a file.

use std::collections::BTreeSet;
use std::path::Path;

use tenantwatch::detect::RuleName;
use tenantwatch::http::Endpoint;

const NUMBERS: [&str; 21] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
];

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

#[test]
fn the_rule_count_is_the_codes() {
    let text = readme().replace('\n', " ");
    let stated: Vec<usize> = text
        .split(" named rules")
        .collect::<Vec<_>>()
        .split_last()
        .map(|(_, before)| before)
        .unwrap_or_default()
        .iter()
        .filter_map(|before| {
            let word = before.rsplit(' ').next()?.to_lowercase();
            NUMBERS
                .iter()
                .position(|n| *n == word)
                .or(word.parse().ok())
        })
        .collect();
    assert!(
        !stated.is_empty(),
        "the README states no \"<n> named rules\""
    );
    for n in stated {
        assert_eq!(n, RuleName::ALL.len(), "the README says {n} named rules");
    }
}

#[test]
fn the_endpoint_table_is_the_routers() {
    let text = readme();
    let section = text
        .split("## Endpoints")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an Endpoints section");
    let mut listed = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = row.split(" | ").next().unwrap_or_default();
        for path in first_cell.split('`').skip(1).step_by(2) {
            let (method, path) = path.split_once(' ').expect("`METHOD /path`");
            let concrete = path.replace("{tenant}", "clinic1");
            let endpoint = Endpoint::from_path(&concrete)
                .unwrap_or_else(|| panic!("the README lists {path}, which is not served"));
            assert!(
                endpoint.allows(&method.parse().expect("a method")),
                "the README lists {method} {path}, which answers {}",
                endpoint.allowed_methods()
            );
            listed.push(endpoint.as_str());
        }
    }
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "an endpoint listed twice: {listed:?}"
    );
    let served: BTreeSet<&str> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        unique, served,
        "the README's endpoint table against the router"
    );
}

#[test]
fn relative_links_lead_to_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, text) in [
        ("README.md", readme()),
        (
            "docs/overview.md",
            std::fs::read_to_string(root.join("docs/overview.md")).expect("docs/overview.md"),
        ),
    ] {
        let dir = root.join(file).parent().expect("a folder").to_path_buf();
        for link in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if link.starts_with("http") {
                continue;
            }
            let path = link.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            assert!(
                dir.join(path).exists(),
                "{file} links to {link}, which is missing"
            );
        }
    }
}
