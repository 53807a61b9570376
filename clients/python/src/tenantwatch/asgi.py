"""Generic ASGI middleware (FastAPI, Starlette, any ASGI app).

    def tenant_of(scope):
        return dict(scope["headers"]).get(b"x-tenant", b"").decode() or None

    app = TenantwatchASGI(app, resolver=tenant_of)

HTTP requests only (websocket and lifespan scopes pass through). The check
runs in a worker thread (`asyncio.to_thread`), so a slow or absent daemon
never stalls the event loop: it costs the thread hand-off (tens of
microseconds) on top of the round trip. Sets `current_tenant` and
`current_endpoint` for the request, as the WSGI middleware does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from . import Client, default_client
from .context import (
    current_endpoint,
    current_tenant,
    endpoint_label,
    too_many_requests,
    valid_tenant,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TenantwatchASGI:
    def __init__(
        self,
        app: ASGIApp,
        *,
        resolver: Callable[[Scope], str | None],
        endpoint: Callable[[Scope], str | None] | None = None,
        cost: Callable[[Scope], int] | None = None,
        check: bool = True,
        client: Client | None = None,
    ) -> None:
        self.app = app
        self.resolver = resolver
        self.endpoint = endpoint
        self.cost = cost
        self.check = check
        self.client = client or default_client()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        tenant = self.resolver(scope)
        if tenant is None or not valid_tenant(tenant):
            await self.app(scope, receive, send)
            return
        extra: tuple[tuple[str, str], ...] = ()
        if self.check:
            cost = self.cost(scope) if self.cost else 1
            decision = await asyncio.to_thread(self.client.check, tenant, cost)
            if not decision.allowed:
                headers, body = too_many_requests(decision)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 429,
                        "headers": [(n.lower().encode(), v.encode()) for n, v in headers],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            extra = decision.headers

        async def send_with_headers(message: Message) -> None:
            if message.get("type") == "http.response.start" and extra:
                headers = list(message.get("headers", []))
                present = {bytes(name).lower() for name, _ in headers}
                headers.extend(
                    (n.lower().encode(), v.encode())
                    for n, v in extra
                    if n.lower().encode() not in present
                )
                message["headers"] = headers
            await send(message)

        tenant_token = current_tenant.set(tenant)
        endpoint_token = current_endpoint.set(
            endpoint_label(self.endpoint(scope)) if self.endpoint else None
        )
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            current_endpoint.reset(endpoint_token)
            current_tenant.reset(tenant_token)
