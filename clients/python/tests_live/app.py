"""The Django project under test: django-tenants' layout (a schema per
tenant, chosen from the host's subdomain, `request.tenant.schema_name`),
with the tenant middleware written out so the test needs no tenant model."""

from __future__ import annotations

import types

from django.db import Error, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


class TenantBySubdomain:
    """What django_tenants' TenantMainMiddleware does: resolve the tenant
    from the host and point the connection's search_path at its schema."""

    def __init__(self, get_response):  # type: ignore[no-untyped-def]
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        schema = request.get_host().split(".")[0]
        request.tenant = types.SimpleNamespace(schema_name=schema)  # type: ignore[attr-defined]
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('search_path', %s, false)", [schema])
        return self.get_response(request)  # type: ignore[no-any-return]


def patients(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        if request.method == "POST":
            cursor.execute("INSERT INTO patients (name) VALUES (%s)", ["new"])
            return JsonResponse({"added": cursor.rowcount})
        cursor.execute("SELECT id, name FROM patients ORDER BY id LIMIT 3")
        return JsonResponse({"patients": len(cursor.fetchall())})


def broken(request: HttpRequest) -> HttpResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")
    except Error:
        return HttpResponse("failed", status=500)
    return HttpResponse("unexpected")


urlpatterns = [path("patients/", patients), path("broken/", broken)]
