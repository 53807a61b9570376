from __future__ import annotations

import asyncio
from wsgiref.util import setup_testing_defaults

from conftest import RATE_HEADERS, denied

import tenantwatch
from tenantwatch.asgi import TenantwatchASGI
from tenantwatch.context import current_endpoint, current_tenant
from tenantwatch.wsgi import TenantwatchWSGI

seen: list[tuple[str | None, str | None]] = []


def wsgi_app(environ, start_response):
    seen.append((current_tenant.get(), current_endpoint.get()))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def call_wsgi(app, tenant):
    environ: dict = {"PATH_INFO": "/items/7"}
    setup_testing_defaults(environ)
    if tenant:
        environ["HTTP_X_TENANT"] = tenant
    answer: dict = {}

    def start_response(status, headers, *exc):
        answer["status"], answer["headers"] = status, dict(headers)

    answer["body"] = b"".join(app(environ, start_response))
    return answer


def wsgi(daemon, udp, **kw):
    client = tenantwatch.Client(udp=udp.address, url=daemon.url, timeout=1.0)
    return TenantwatchWSGI(
        wsgi_app,
        resolver=lambda env: env.get("HTTP_X_TENANT"),
        endpoint=lambda env: "GET /items/{id}",
        client=client,
        **kw,
    )


def test_wsgi_allows_and_sets_the_context(daemon, udp):
    daemon.answer = lambda body: (200, {**denied(body["tenant"]), "allowed": True}, RATE_HEADERS)
    seen.clear()
    answer = call_wsgi(wsgi(daemon, udp), "clinic1")
    assert answer["status"] == "200 OK"
    assert answer["headers"]["RateLimit"] == RATE_HEADERS["RateLimit"]
    assert seen == [("clinic1", "GET /items/{id}")]
    assert current_tenant.get() is None


def test_wsgi_denies_with_429(daemon, udp):
    daemon.answer = lambda body: (429, denied(body["tenant"], 100), RATE_HEADERS)
    seen.clear()
    answer = call_wsgi(wsgi(daemon, udp), "clinic1")
    assert answer["status"] == "429 Too Many Requests"
    assert answer["headers"]["Retry-After"] == "1"
    assert answer["headers"]["RateLimit-Policy"] == RATE_HEADERS["RateLimit-Policy"]
    assert seen == []


def test_wsgi_without_tenant_passes_through(daemon, udp):
    assert call_wsgi(wsgi(daemon, udp), None)["status"] == "200 OK"
    assert daemon.requests == []


async def asgi_app(scope, receive, send):
    seen.append((current_tenant.get(), current_endpoint.get()))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


def call_asgi(app, tenant):
    headers = [(b"x-tenant", tenant.encode())] if tenant else []
    scope = {"type": "http", "method": "GET", "path": "/items/7", "headers": headers}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def asgi(daemon, udp):
    return TenantwatchASGI(
        asgi_app,
        resolver=lambda scope: dict(scope["headers"]).get(b"x-tenant", b"").decode() or None,
        endpoint=lambda scope: "GET /items/{id}",
        client=tenantwatch.Client(udp=udp.address, url=daemon.url, timeout=1.0),
    )


def test_asgi_allows_and_adds_headers(daemon, udp):
    daemon.answer = lambda body: (200, {**denied(body["tenant"]), "allowed": True}, RATE_HEADERS)
    seen.clear()
    sent = call_asgi(asgi(daemon, udp), "clinic1")
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 200
    assert headers[b"ratelimit"] == RATE_HEADERS["RateLimit"].encode()
    assert headers[b"x-app"] == b"1"
    assert seen == [("clinic1", "GET /items/{id}")]


def test_asgi_denies_with_429(daemon, udp):
    daemon.answer = lambda body: (429, denied(body["tenant"], 4200), RATE_HEADERS)
    seen.clear()
    sent = call_asgi(asgi(daemon, udp), "clinic1")
    assert sent[0]["status"] == 429
    assert dict(sent[0]["headers"])[b"retry-after"] == b"5"
    assert seen == []


def test_asgi_passes_other_scopes_through(daemon, udp):
    app = asgi(daemon, udp)
    seen.clear()

    async def nothing():
        return {}

    async def drop(message):
        pass

    asyncio.run(app({"type": "lifespan"}, nothing, drop))
    assert seen == [(None, None)]
    assert daemon.requests == []
