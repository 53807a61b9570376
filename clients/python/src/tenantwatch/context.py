"""What every integration shares: the request's tenant and endpoint, how a
statement is classified, the sqlcommenter tag, and the 429 answer.

The request's tenant and endpoint live in context variables, so query
hooks (Django's execute wrapper, SQLAlchemy events) find them in threads
and in asyncio tasks alike.
"""

from __future__ import annotations

import contextvars
import re
from urllib.parse import quote

from .check import Decision

current_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tenantwatch_tenant", default=None
)
current_endpoint: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tenantwatch_endpoint", default=None
)

# docs/ingest.md: 1 to 128 bytes of ASCII letters, digits and `_-.:@/`,
# not starting with `__`.
_TENANT = re.compile(r"(?!__)[A-Za-z0-9_\-.:@/]{1,128}")
# Printable ASCII without `"` or `\`, 1 to 128 characters.
_LABEL_BAD = re.compile(r'[^\x20-\x7e]|["\\]')

_WRITE = frozenset(
    ("insert", "update", "delete", "merge", "copy", "create", "alter", "drop", "truncate")
)
_READ = frozenset(("select", "show", "explain", "values", "table", "fetch"))


def valid_tenant(tenant: object) -> bool:
    """Whether `tenant` is an id the daemon accepts."""
    return isinstance(tenant, str) and _TENANT.fullmatch(tenant) is not None


def endpoint_label(text: str | None) -> str | None:
    """`text` made a valid endpoint label (cut to 128), or None."""
    if not text:
        return None
    text = _LABEL_BAD.sub("?", text[:128])
    return None if text.startswith("__") else text


def _first_word(sql: str) -> str:
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace() or c == "(":
            i += 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        else:
            break
    j = i
    while j < n and sql[j].isalpha():
        j += 1
    return sql[i:j].lower()


def classify(sql: str) -> str:
    """`read`, `write`, `other` or `schema_switch` for one statement.

    `SET search_path` and `SET ROLE` (what django-tenants and role-per-tenant
    apps run to switch a session) are `schema_switch`; a `WITH` is a write
    when its text modifies rows.
    """
    word = _first_word(sql)
    if word in _READ:
        return "read"
    if word in _WRITE:
        return "write"
    if word == "with":
        lower = sql.lower()
        if any(f"{w} " in lower for w in ("insert", "update", "delete")):
            return "write"
        return "read"
    if word == "set":
        lower = sql.lower()
        if "search_path" in lower or " role" in lower:
            return "schema_switch"
    return "other"


def comment_for(tenant: str) -> str:
    """The sqlcommenter tag the daemon's `query_comment` rule reads.

    Valid ids need no escaping (their characters are kept by `quote`), so
    the comment never holds a `%` that a driver would read as a placeholder.
    """
    return f"/*tenant='{quote(tenant, safe='_-.:@/')}'*/ "


def too_many_requests(decision: Decision) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and JSON body of the 429 answer for a denied decision."""
    headers = [
        ("Content-Type", "application/json"),
        ("Retry-After", decision.retry_after_header),
        *decision.headers,
    ]
    body = (
        b'{"error":"too many requests","retry_after_ms":'
        + str(round(decision.retry_after * 1000)).encode()
        + b"}"
    )
    return headers, body
