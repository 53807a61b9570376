from __future__ import annotations

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

import tenantwatch
from tenantwatch.context import current_endpoint, current_tenant
from tenantwatch.sqlalchemy import instrument_engine


def test_each_statement_is_one_event(udp):
    engine = create_engine("sqlite://")
    client = tenantwatch.Client(udp=udp.address, flush_interval=0.02)
    instrument_engine(engine, client=client)
    tenant = current_tenant.set("clinic1")
    endpoint = current_endpoint.set("POST /notes")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE notes (a int)"))
            conn.execute(text("INSERT INTO notes VALUES (1), (2)"))
            conn.execute(text("SELECT * FROM notes")).fetchall()
            with pytest.raises(OperationalError):
                conn.execute(text("SELECT * FROM missing"))
    finally:
        current_endpoint.reset(endpoint)
        current_tenant.reset(tenant)
    with engine.begin() as conn:  # no tenant: not recorded
        conn.execute(text("SELECT 1"))
    events = udp.collect(5, timeout=1.0)
    assert [(e["kind"], e.get("rows", 0), e.get("error", False)) for e in events] == [
        ("write", 0, False),
        ("write", 2, False),
        ("read", 0, False),
        ("read", 0, True),
    ]
    assert {(e["tenant"], e["endpoint"]) for e in events} == {("clinic1", "POST /notes")}


def test_sqlcommenter_tags_the_statement(udp):
    engine = create_engine("sqlite://")
    client = tenantwatch.Client(udp=udp.address)
    instrument_engine(engine, client=client, tenant=lambda: "acme", sqlcommenter=True)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def capture(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)
        return statement, parameters

    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert statements == ["/*tenant='acme'*/ SELECT 1"]
    client.close()
