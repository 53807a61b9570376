"""django-tenants' tenant and domain models; conftest.py creates their
tables with SQL (the test ships no migrations)."""

from django.db import models
from django_tenants.models import DomainMixin, TenantMixin


class Client(TenantMixin):
    name = models.CharField(max_length=100)
    auto_create_schema = False


class Domain(DomainMixin):
    pass
