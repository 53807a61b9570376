"""The views of the Django project under test: django-tenants has set the
connection's schema (search_path) to the tenant's before they run."""

from __future__ import annotations

from django.db import Error, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


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
