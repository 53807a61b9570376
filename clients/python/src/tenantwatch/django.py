"""Django: a middleware that checks each request's tenant against its quota
and times every database query the request runs.

    MIDDLEWARE = [
        "django_tenants.middleware.main.TenantMainMiddleware",  # sets request.tenant
        ...,
        "tenantwatch.django.TenantwatchMiddleware",
    ]
    TENANTWATCH = {
        "TENANT_RESOLVER": "tenantwatch.django.django_tenants_resolver",  # the default
        "CHECK": True,            # call POST /v1/ratelimit/check, answer 429 when denied
        "COST": 1,                # or a dotted path to a callable(request) -> int
        "INSTRUMENT_DB": True,    # one event per query, tagged with the URL route
        "SQLCOMMENTER": False,    # prefix /*tenant='...'*/ so PostgreSQL-side figures attribute
        "CLIENT": {},             # tenantwatch.Client options; {} = the environment
    }

The resolver is a callable `(request) -> str | None`; None (or an invalid
id) leaves the request alone. The default reads django-tenants'
`request.tenant.schema_name` (skipping the public schema), or a string
`request.tenant`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string

from . import Client, Decision, default_client
from .context import (
    classify,
    comment_for,
    current_endpoint,
    current_tenant,
    endpoint_label,
    too_many_requests,
    valid_tenant,
)

Resolver = Callable[[HttpRequest], "str | None"]


def django_tenants_resolver(request: HttpRequest) -> str | None:
    """The tenant django-tenants resolved: its schema name, not `public`."""
    tenant = getattr(request, "tenant", None)
    if tenant is None:
        return None
    if isinstance(tenant, str):
        return tenant
    schema = getattr(tenant, "schema_name", None)
    public = getattr(settings, "PUBLIC_SCHEMA_NAME", "public")
    if not isinstance(schema, str) or schema == public:
        return None
    return schema


def request_endpoint(request: HttpRequest) -> str | None:
    """`METHOD /route/<template>` once Django has resolved the URL."""
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if not route:
        return None
    return endpoint_label(f"{request.method} /{route}")


class QueryRecorder:
    """A `connection.execute_wrapper` that sends one event per query."""

    def __init__(
        self,
        client: Client,
        tenant: str,
        *,
        endpoint: Callable[[], str | None] | str | None = None,
        sqlcommenter: bool = False,
    ) -> None:
        self.client = client
        self.tenant = tenant
        self._endpoint = endpoint
        self.comment = comment_for(tenant) if sqlcommenter else ""

    def endpoint(self) -> str | None:
        endpoint = self._endpoint
        if callable(endpoint):
            found = endpoint()
            if found is not None:
                self._endpoint = found  # the route does not change within a request
            return found
        return endpoint

    def __call__(
        self,
        execute: Callable[..., Any],
        sql: str,
        params: Any,
        many: bool,
        context: dict[str, Any],
    ) -> Any:
        kind = classify(sql)
        error = False
        start = time.perf_counter()
        try:
            return execute(self.comment + sql, params, many, context)
        except Exception:
            error = True
            raise
        finally:
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            cursor = context.get("cursor")
            rows = getattr(cursor, "rowcount", 0) or 0
            self.client.record_query(
                self.tenant,
                kind,
                elapsed_ms,
                rows if rows > 0 else 0,
                error,
                self.endpoint(),
            )


@contextlib.contextmanager
def instrument(
    tenant: str,
    *,
    client: Client | None = None,
    endpoint: str | None = None,
    sqlcommenter: bool = False,
) -> Iterator[QueryRecorder]:
    """Times every query on every database connection for the block
    (for work outside a request: a Celery task, a management command)."""
    recorder = QueryRecorder(
        client or default_client(), tenant, endpoint=endpoint, sqlcommenter=sqlcommenter
    )
    with contextlib.ExitStack() as stack:
        for conn in connections.all():
            stack.enter_context(conn.execute_wrapper(recorder))
        yield recorder


def _setting_callable(value: Any, default: Any) -> Any:
    if value is None:
        return default
    return import_string(value) if isinstance(value, str) else value


class TenantwatchMiddleware:
    """Checks the tenant's quota, answers 429 when denied, times queries."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        options: dict[str, Any] = getattr(settings, "TENANTWATCH", {})
        self.resolve: Resolver = _setting_callable(
            options.get("TENANT_RESOLVER"), django_tenants_resolver
        )
        cost = options.get("COST", 1)
        self.cost: Callable[[HttpRequest], int] = (
            (lambda _request: cost) if isinstance(cost, int) else _setting_callable(cost, None)
        )
        self.check = bool(options.get("CHECK", True))
        self.instrument_db = bool(options.get("INSTRUMENT_DB", True))
        self.sqlcommenter = bool(options.get("SQLCOMMENTER", False))
        client_options = options.get("CLIENT")
        self.client = Client(**client_options) if client_options else default_client()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant = self.resolve(request)
        if tenant is None or not valid_tenant(tenant):
            return self.get_response(request)
        decision: Decision | None = None
        if self.check:
            decision = self.client.check(tenant, self.cost(request))
            if not decision.allowed:
                headers, body = too_many_requests(decision)
                response = HttpResponse(body, status=429, content_type=headers[0][1])
                for name, value in headers[1:]:
                    response[name] = value
                return response
        tenant_token = current_tenant.set(tenant)
        endpoint_token = current_endpoint.set(None)
        try:
            if self.instrument_db:
                recorder = QueryRecorder(
                    self.client,
                    tenant,
                    endpoint=lambda: request_endpoint(request),
                    sqlcommenter=self.sqlcommenter,
                )
                with contextlib.ExitStack() as stack:
                    for conn in connections.all():
                        stack.enter_context(conn.execute_wrapper(recorder))
                    response = self.get_response(request)
            else:
                response = self.get_response(request)
        finally:
            current_endpoint.reset(endpoint_token)
            current_tenant.reset(tenant_token)
        if decision is not None:
            for name, value in decision.headers:
                if not response.has_header(name):
                    response[name] = value
        return response
