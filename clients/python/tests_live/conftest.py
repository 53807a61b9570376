"""A real Django project on PostgreSQL (one schema per tenant) in front of
the real daemon. Needs TENANTWATCH_TEST_PG (a libpq DSN of a throwaway
cluster's superuser) and TENANTWATCH_TEST_BIN; tests/it/python_client.rs
starts the cluster, builds the binary and sets both."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from daemon import Daemon

TENANTS = ("clinic1", "clinic2", "tiny", "stormy")
DATABASE = "tw_django"


def _dsn_parts() -> dict[str, str]:
    dsn = os.environ.get("TENANTWATCH_TEST_PG")
    if not dsn:
        raise pytest.UsageError(
            "TENANTWATCH_TEST_PG is not set: these tests need a throwaway PostgreSQL; run them "
            "with `cargo test --test it python_client::` (it starts one), not pytest alone"
        )
    return dict(part.split("=", 1) for part in dsn.split())


def _create_schemas(parts: dict[str, str]) -> None:
    import psycopg

    admin = {k: v for k, v in parts.items() if k != "dbname"}
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(dbname=DATABASE, autocommit=True, **admin) as conn:
        for tenant in TENANTS:
            conn.execute(f"CREATE SCHEMA {tenant}")
            conn.execute(f"CREATE TABLE {tenant}.patients (id serial PRIMARY KEY, name text)")
            conn.execute(f"INSERT INTO {tenant}.patients (name) VALUES ('a'), ('b'), ('c')")


def pytest_configure(config: pytest.Config) -> None:
    parts = _dsn_parts()
    _create_schemas(parts)
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="live-test",
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": DATABASE,
                "HOST": parts.get("host", "127.0.0.1"),
                "PORT": parts.get("port", "5432"),
                "USER": parts.get("user", "postgres"),
            }
        },
        ROOT_URLCONF="app",
        MIDDLEWARE=["app.TenantBySubdomain", "tenantwatch.django.TenantwatchMiddleware"],
        INSTALLED_APPS=[],
        TENANTWATCH={},
    )
    import django

    django.setup()


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    d.stop()
