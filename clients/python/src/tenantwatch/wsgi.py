"""Generic WSGI middleware (Flask, Bottle, Pyramid, any WSGI app).

    app.wsgi_app = TenantwatchWSGI(app.wsgi_app, resolver=lambda env: env.get("HTTP_X_TENANT"))

Resolves the tenant from the WSGI environ, checks its quota (429 with
`Retry-After` and the RateLimit headers when denied), passes the RateLimit
headers on otherwise, and sets `tenantwatch.context.current_tenant` (and
`current_endpoint`, from `endpoint(environ)` when given) for the request, so
the SQLAlchemy hooks of `tenantwatch.sqlalchemy` tag its queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from . import Client, default_client
from .context import (
    current_endpoint,
    current_tenant,
    endpoint_label,
    too_many_requests,
    valid_tenant,
)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class TenantwatchWSGI:
    def __init__(
        self,
        app: WSGIApp,
        *,
        resolver: Callable[[Environ], str | None],
        endpoint: Callable[[Environ], str | None] | None = None,
        cost: Callable[[Environ], int] | None = None,
        check: bool = True,
        client: Client | None = None,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.endpoint = endpoint
        self.cost = cost
        self.check = check
        self.client = client or default_client()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tenant = self.resolver(environ)
        if tenant is None or not valid_tenant(tenant):
            return self.app(environ, start_response)
        extra: tuple[tuple[str, str], ...] = ()
        if self.check:
            decision = self.client.check(tenant, self.cost(environ) if self.cost else 1)
            if not decision.allowed:
                headers, body = too_many_requests(decision)
                start_response("429 Too Many Requests", headers)
                return [body]
            extra = decision.headers

        def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            present = {name.lower() for name, _ in headers}
            headers.extend((n, v) for n, v in extra if n.lower() not in present)
            return start_response(status, headers, *exc_info)

        tenant_token = current_tenant.set(tenant)
        endpoint_token = current_endpoint.set(
            endpoint_label(self.endpoint(environ)) if self.endpoint else None
        )
        try:
            # Queries run while the app is called; a streamed body's later
            # queries are outside the context (as with most WSGI middleware).
            return self.app(environ, start)
        finally:
            current_endpoint.reset(endpoint_token)
            current_tenant.reset(tenant_token)
