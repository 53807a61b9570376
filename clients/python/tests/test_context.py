from __future__ import annotations

import pytest

from tenantwatch.context import classify, comment_for, endpoint_label, valid_tenant


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1", "read"),
        ("  select * from t", "read"),
        ("/* tenant='a' */ SELECT 1", "read"),
        ("-- note\nSELECT 1", "read"),
        ("(SELECT 1) UNION (SELECT 2)", "read"),
        ("SHOW search_path", "read"),
        ("INSERT INTO t VALUES (1)", "write"),
        ("update t set a = 1", "write"),
        ("DELETE FROM t", "write"),
        ("CREATE TABLE t (a int)", "write"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "read"),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "write"),
        ('SET search_path = "clinic1", public', "schema_switch"),
        ("SET ROLE tenant_clinic1", "schema_switch"),
        ("SET statement_timeout = 1000", "other"),
        ("BEGIN", "other"),
        ("", "other"),
    ],
)
def test_classify(sql, kind):
    assert classify(sql) == kind


def test_valid_tenant():
    assert valid_tenant("clinic-1.eu:a@b/c_d")
    assert not valid_tenant("__internal")
    assert not valid_tenant("")
    assert not valid_tenant("a b")
    assert not valid_tenant("x" * 129)
    assert not valid_tenant(None)


def test_comment_has_no_placeholder_characters():
    assert comment_for("clinic1") == "/*tenant='clinic1'*/ "
    assert "%" not in comment_for("a:b@c/d.e-f_g")


def test_endpoint_label():
    assert endpoint_label('GET /a/"b"') == "GET /a/?b?"
    assert endpoint_label("x" * 200) == "x" * 128
    assert endpoint_label("__x") is None
    assert endpoint_label(None) is None
