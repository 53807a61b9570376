"""The Django middleware against SQLite and the fake daemon (the live test
in tests_live/ runs it against PostgreSQL and the real daemon)."""

from __future__ import annotations

import types

import django
import pytest
from conftest import RATE_HEADERS, denied
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.test import Client as DjangoClient
from django.test import RequestFactory, override_settings
from django.urls import path

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="test",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[f"{__name__}.TenantFromHeader", "tenantwatch.django.TenantwatchMiddleware"],
        INSTALLED_APPS=[],
    )
    django.setup()


class TenantFromHeader:
    """Stands in for django-tenants: sets request.tenant with a schema_name."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        name = request.headers.get("X-Tenant")
        if name:
            request.tenant = types.SimpleNamespace(schema_name=name)
        return self.get_response(request)


def patient(request, id):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s UNION ALL SELECT %s", [id, id + 1])
        rows = cursor.fetchall()
    return JsonResponse({"rows": len(rows)})


def write(request):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS notes (a int)")
        cursor.execute("INSERT INTO notes VALUES (1), (2), (3)")
    return HttpResponse("ok")


def broken(request):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")
    except django.db.Error:
        return HttpResponse("failed", status=500)
    return HttpResponse("?")


seen_sql: list[str] = []


def tagged(request):
    def capture(execute, sql, params, many, context):
        seen_sql.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok")


urlpatterns = [
    path("patients/<int:id>/", patient),
    path("write/", write),
    path("broken/", broken),
    path("tagged/", tagged),
]


@pytest.fixture
def tw(udp, daemon):
    options = {
        "CLIENT": {"udp": udp.address, "url": daemon.url, "flush_interval": 0.02, "timeout": 1.0}
    }
    with override_settings(TENANTWATCH=options):
        yield udp, daemon


def request(path_: str, tenant: str | None = "clinic1"):
    headers = {"HTTP_X_TENANT": tenant} if tenant else {}
    return DjangoClient().get(path_, **headers)


def test_each_query_is_one_event_tagged_with_the_route(tw):
    udp, daemon = tw
    assert request("/patients/7/").status_code == 200
    assert request("/write/").status_code == 200
    assert request("/broken/").status_code == 500
    events = udp.collect(4)
    # Each DjangoClient builds its own middleware (and client, from the
    # CLIENT option), so datagrams of different requests may cross.
    seen = sorted(
        (e["kind"], e.get("rows", 0), e.get("error", False), e["endpoint"]) for e in events
    )
    # SQLite's rowcount is -1 for a SELECT (PostgreSQL's drivers give the
    # rows; tests_live/ checks that): sent as 0.
    assert seen == sorted(
        [
            ("read", 0, False, "GET /patients/<int:id>/"),
            ("write", 0, False, "GET /write/"),
            ("write", 3, False, "GET /write/"),
            ("read", 0, True, "GET /broken/"),
        ]
    )
    assert {e["tenant"] for e in events} == {"clinic1"}
    assert [body["tenant"] for body, _ in daemon.requests] == ["clinic1"] * 3


def test_a_denied_tenant_gets_429_and_its_view_never_runs(tw):
    udp, daemon = tw
    daemon.answer = lambda body: (429, denied(body["tenant"], 2500), RATE_HEADERS)
    response = request("/patients/7/")
    assert response.status_code == 429
    assert response["Retry-After"] == "3"
    assert response["RateLimit"] == RATE_HEADERS["RateLimit"]
    assert response["RateLimit-Policy"] == RATE_HEADERS["RateLimit-Policy"]
    assert udp.collect(1, timeout=0.3) == []


def test_an_allowed_answer_passes_the_ratelimit_headers_on(tw):
    _, daemon = tw
    daemon.answer = lambda body: (
        200,
        {**denied(body["tenant"]), "allowed": True, "remaining": 5},
        RATE_HEADERS,
    )
    response = request("/patients/1/")
    assert response.status_code == 200
    assert response["RateLimit-Policy"] == RATE_HEADERS["RateLimit-Policy"]


def test_no_tenant_means_no_check_and_no_events(tw):
    udp, daemon = tw
    assert request("/patients/1/", tenant=None).status_code == 200
    assert request("/patients/1/", tenant="public").status_code == 200
    assert request("/patients/1/", tenant="__bad").status_code == 200
    assert daemon.requests == []
    assert udp.collect(1, timeout=0.3) == []


def test_daemon_down_fails_open(udp, closed_port):
    options = {"CLIENT": {"udp": udp.address, "url": f"http://127.0.0.1:{closed_port}"}}
    with override_settings(TENANTWATCH=options):
        assert request("/patients/1/").status_code == 200


def test_fail_closed_denies_when_the_daemon_is_down(udp, closed_port):
    client = {"udp": udp.address, "url": f"http://127.0.0.1:{closed_port}", "fail_mode": "closed"}
    with override_settings(TENANTWATCH={"CLIENT": client}):
        response = request("/patients/1/")
    assert response.status_code == 429
    assert response["Retry-After"] == "1"


def test_sqlcommenter_prefixes_the_tenant_tag(tw):
    udp, daemon = tw
    seen_sql.clear()
    options = {
        "SQLCOMMENTER": True,
        "CLIENT": {"udp": udp.address, "url": daemon.url, "timeout": 1.0},
    }
    with override_settings(TENANTWATCH=options):
        assert request("/tagged/", tenant="clinic-2").status_code == 200
    assert seen_sql == ["/*tenant='clinic-2'*/ SELECT 1"]


def test_resolver_setting_names_a_callable(tw):
    udp, daemon = tw
    options = {
        "TENANT_RESOLVER": f"{__name__}.resolve_from_query",
        "CHECK": False,
        "CLIENT": {"udp": udp.address, "url": daemon.url, "timeout": 1.0},
    }
    with override_settings(TENANTWATCH=options):
        DjangoClient().get("/patients/1/?t=acme")
    assert [e["tenant"] for e in udp.collect(1)] == ["acme"]
    assert daemon.requests == []


def resolve_from_query(request):
    return request.GET.get("t")


def test_django_tenants_resolver():
    from tenantwatch.django import django_tenants_resolver

    req = RequestFactory().get("/")
    assert django_tenants_resolver(req) is None
    req.tenant = types.SimpleNamespace(schema_name="clinic3")
    assert django_tenants_resolver(req) == "clinic3"
    req.tenant = types.SimpleNamespace(schema_name="public")
    assert django_tenants_resolver(req) is None
    req.tenant = "plain"
    assert django_tenants_resolver(req) == "plain"
