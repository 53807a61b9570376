//! The example configurations of docs/layouts.md (`examples/configs/`):
//! each is validated by `tenantwatch check-config`, with the secret and
//! data files it names given in temporary directories, and the page and
//! the folder list the same files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_layout_config_passes_check_config() {
    let root = std::env::temp_dir().join(format!("tw-layouts-{}", std::process::id()));
    let secrets = root.join("secrets");
    let config = root.join("config");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    for name in [
        "tenantwatch-token",
        "tenantwatch-read-token",
        "pg-password",
        "pgbouncer-password",
        "shop-token",
        "crm-token",
    ] {
        let token = format!("{name}-0123456789abcdef0123456789abcdef\n");
        std::fs::write(secrets.join(name), token).unwrap();
    }
    std::fs::write(config.join("expected-tenants.txt"), "acme\nglobex\n").unwrap();
    std::fs::write(config.join("tiers.csv"), "shop:1,shop-large\n").unwrap();
    let files = examples();
    assert_eq!(files.len(), 4, "one example per layout: {files:?}");
    for file in files {
        let out = Command::new(env!("CARGO_BIN_EXE_tenantwatch"))
            .arg("check-config")
            .arg(&file)
            .env("SECRETS_DIR", &secrets)
            .env("CONFIG_DIR", &config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(": ok"),
            "{} is refused: {}{}",
            file.display(),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn the_layouts_page_names_every_example() {
    let page = include_str!("../../docs/layouts.md");
    for file in examples() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            page.contains(&format!("examples/configs/{name}")),
            "docs/layouts.md does not describe examples/configs/{name}"
        );
    }
}
