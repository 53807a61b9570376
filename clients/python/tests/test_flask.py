"""Flask with the WSGI middleware and the SQLAlchemy hooks, the endpoint
taken from Flask's URL rule at query time."""

from __future__ import annotations

from conftest import RATE_HEADERS, denied
from flask import Flask, request
from sqlalchemy import create_engine, text

import tenantwatch
from tenantwatch.sqlalchemy import instrument_engine
from tenantwatch.wsgi import TenantwatchWSGI


def make_app(udp, daemon):
    client = tenantwatch.Client(udp=udp.address, url=daemon.url, timeout=1.0)
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int)"))
    instrument_engine(
        engine,
        client=client,
        endpoint=lambda: f"{request.method} {request.url_rule.rule}",
    )
    app = Flask(__name__)

    @app.post("/items/<int:item>")
    def add(item):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO items VALUES (:i), (:i)"), {"i": item})
        return "ok"

    app.wsgi_app = TenantwatchWSGI(  # type: ignore[method-assign]
        app.wsgi_app, resolver=lambda env: env.get("HTTP_X_TENANT"), client=client
    )
    return app, client


def test_flask_queries_are_events_with_the_route(udp, daemon):
    app, client = make_app(udp, daemon)
    answer = app.test_client().post("/items/7", headers={"X-Tenant": "clinic1"})
    assert answer.status_code == 200
    client.flush()
    events = udp.collect(1)
    assert [(e["tenant"], e["kind"], e["rows"], e["endpoint"]) for e in events] == [
        ("clinic1", "write", 2, "POST /items/<int:item>")
    ]


def test_flask_denied_is_429(udp, daemon):
    daemon.answer = lambda body: (429, denied(body["tenant"], 1200), RATE_HEADERS)
    app, _ = make_app(udp, daemon)
    answer = app.test_client().post("/items/7", headers={"X-Tenant": "clinic1"})
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "2"
    assert answer.headers["RateLimit"] == RATE_HEADERS["RateLimit"]
