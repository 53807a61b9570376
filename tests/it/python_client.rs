//! Runs the Python client's tests (`clients/python`): its unit tests, and
//! the live ones, a Django project with django-tenants on a throwaway
//! PostgreSQL (a schema per tenant) in front of this build's daemon binary. Needs the virtualenv
//! `target/venv` with the client's test dependencies, which scripts/test.sh
//! creates.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's Python, which must have pytest, Django and psycopg.
fn python() -> PathBuf {
    let python = root().join("target/venv/bin/python");
    let probe = Command::new(&python)
        .args([
            "-c",
            "import pytest, django, django_tenants, flask, psycopg, sqlalchemy",
        ])
        .output();
    let ok = probe.as_ref().is_ok_and(|out| out.status.success());
    assert!(
        ok,
        "{} with pytest, Django, django-tenants, Flask, psycopg and SQLAlchemy is needed: run scripts/test.sh (it creates \
         the venv), or python3 -m venv target/venv && target/venv/bin/pip install './clients/python[test]' ({:?})",
        python.display(),
        probe.map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
    );
    python
}

fn pytest(suite: &str, env: &[(&str, String)]) {
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", suite])
        .current_dir(root().join("clients/python"))
        // The source tree, not whatever version the venv has installed.
        .env("PYTHONPATH", root().join("clients/python/src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pytest {suite} failed:\n{report}");
    println!("{report}");
}

#[test]
fn unit_tests() {
    pytest("tests", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_project_against_the_daemon() {
    let cluster = support::cluster().await;
    let env = [
        ("TENANTWATCH_TEST_PG", cluster.dsn("postgres")),
        (
            "TENANTWATCH_TEST_BIN",
            env!("CARGO_BIN_EXE_tenantwatch").to_string(),
        ),
    ];
    tokio::task::spawn_blocking(move || pytest("tests_live", &env))
        .await
        .unwrap();
    drop(cluster);
}
