"""A real Django project with django-tenants on PostgreSQL (one schema per
tenant, chosen by the host name) in front of the real daemon. Needs
TENANTWATCH_TEST_PG (a libpq DSN of a throwaway cluster's superuser) and
TENANTWATCH_TEST_BIN; tests/it/python_client.rs starts the cluster, builds
the binary and sets both."""

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
        # django-tenants' shared tables (customers.models), in public.
        conn.execute(
            "CREATE TABLE customers_client (id bigserial PRIMARY KEY,"
            " schema_name varchar(63) NOT NULL UNIQUE, name varchar(100) NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE customers_domain (id bigserial PRIMARY KEY,"
            " domain varchar(253) NOT NULL UNIQUE,"
            " tenant_id bigint NOT NULL REFERENCES customers_client,"
            " is_primary boolean NOT NULL)"
        )
        for tenant in TENANTS:
            conn.execute(
                "WITH c AS (INSERT INTO customers_client (schema_name, name) VALUES (%s, %s)"
                " RETURNING id) INSERT INTO customers_domain (domain, tenant_id, is_primary)"
                " SELECT %s, id, true FROM c",
                (tenant, tenant, f"{tenant}.example.test"),
            )
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
                "ENGINE": "django_tenants.postgresql_backend",
                "NAME": DATABASE,
                "HOST": parts.get("host", "127.0.0.1"),
                "PORT": parts.get("port", "5432"),
                "USER": parts.get("user", "postgres"),
            }
        },
        DATABASE_ROUTERS=["django_tenants.routers.TenantSyncRouter"],
        SHARED_APPS=["django_tenants", "customers", "django.contrib.contenttypes"],
        TENANT_APPS=["django.contrib.contenttypes"],
        INSTALLED_APPS=["django_tenants", "customers", "django.contrib.contenttypes"],
        TENANT_MODEL="customers.Client",
        TENANT_DOMAIN_MODEL="customers.Domain",
        ROOT_URLCONF="app",
        MIDDLEWARE=[
            "django_tenants.middleware.main.TenantMainMiddleware",
            "tenantwatch.django.TenantwatchMiddleware",
        ],
        TENANTWATCH={},  # the defaults: django-tenants' request.tenant
    )
    import django

    django.setup()


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    d.stop()
