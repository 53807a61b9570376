"""SQLAlchemy: event hooks that time every statement an engine runs.

    from tenantwatch.sqlalchemy import instrument_engine
    instrument_engine(engine)                      # tenant from the request context
    instrument_engine(engine, sqlcommenter=True)   # and tag the SQL for PostgreSQL-side figures

The tenant and endpoint come from `tenantwatch.context` (set by the WSGI
and ASGI middleware), or from `tenant()` / `endpoint()` callables given
here. A statement with no tenant is not recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event

from . import Client, default_client
from .context import classify, comment_for, current_endpoint, current_tenant, valid_tenant

_START = "tenantwatch_start"


def instrument_engine(
    engine: Any,
    *,
    client: Client | None = None,
    tenant: Callable[[], str | None] | None = None,
    endpoint: Callable[[], str | None] | None = None,
    sqlcommenter: bool = False,
) -> None:
    """Listens on `engine` (an `Engine`, or a `Connection`/`AsyncEngine.sync_engine`)."""
    sender = client or default_client()
    tenant_of = tenant or current_tenant.get
    endpoint_of = endpoint or current_endpoint.get

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def before(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> tuple[str, Any]:
        who = tenant_of()
        if context is not None:
            context._tenantwatch = (who, time.perf_counter())
        if sqlcommenter and who is not None and valid_tenant(who):
            statement = comment_for(who) + statement
        return statement, parameters

    def record(context: Any, statement: str, rows: int, error: bool) -> None:
        started = getattr(context, "_tenantwatch", None)
        if started is None:
            return
        context._tenantwatch = None
        who, start = started
        if who is None or not valid_tenant(who):
            return
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        sender.record_query(who, classify(statement), elapsed_ms, rows, error, endpoint_of())

    @event.listens_for(engine, "after_cursor_execute")
    def after(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        rows = getattr(cursor, "rowcount", 0) or 0
        record(context, statement, rows if rows > 0 else 0, False)

    @event.listens_for(engine, "handle_error")
    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        if context is not None:
            record(context, exception_context.statement or "", 0, True)
