"""The MySQL sink's TLS settings without a server: defaults, the URL's ssl_* forms, refusals, and
the SSLContext PyMySQL is given (tests/integration/test_sink_mysql.py connects with them)."""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from app.errors import UserError
from app.settings import MySQLSinkSettings, Settings
from app.sinks.mysql_tls import TLS, context, resolve, ssl_args

URL = "mysql+pymysql://u:pw@db.example:3306/events"


@pytest.fixture()
def pem(tmp_path: Path) -> Path:
    """An existing file: resolve() checks presence; PEM content is context()'s business."""
    path = tmp_path / "ca.pem"
    path.write_text("not read by resolve()")
    return path


def tls_of(url: str = URL, **options: Any) -> TLS:
    return resolve(MySQLSinkSettings(url=SecretStr(url), **options), make_url(url))[1]


def test_without_settings_pymysql_prefers_tls_unverified() -> None:
    assert tls_of() == TLS("preferred")
    assert ssl_args(TLS("preferred")) == {}
    assert ssl_args(tls_of(ssl_mode="disabled")) == {"ssl_disabled": True}


def test_a_ca_means_required_and_verified_against_it(pem: Path) -> None:
    assert tls_of(ssl_ca=pem) == TLS("required", ca=pem, verify_cert=True, verify_identity=True)


def test_required_alone_verifies_with_the_system_cas() -> None:
    tls = tls_of(ssl_mode="required")
    assert tls == TLS("required", verify_cert=True, verify_identity=True)
    ctx = context(tls)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


def test_skip_verify_is_required_tls_without_checks() -> None:
    tls = tls_of(ssl_mode="required", ssl_verify_cert=False)
    assert tls == TLS("required", verify_cert=False, verify_identity=False)
    ctx = context(tls)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    # An SSLContext makes PyMySQL require TLS (its ssl_verify_cert=False would fall back to plain).
    assert isinstance(ssl_args(tls)["ssl"], ssl.SSLContext)


def test_the_host_name_check_can_be_turned_off_alone(pem: Path) -> None:
    tls = tls_of(ssl_ca=pem, ssl_verify_identity=False)
    assert (tls.verify_cert, tls.verify_identity) == (True, False)


def test_a_client_certificate_alone_requires_tls(pem: Path) -> None:
    assert tls_of(ssl_cert=pem, ssl_key=pem).mode == "required"
    assert tls_of(ssl_cert=pem).key is None  # key and certificate in one PEM file


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ssl_mode": "preferred", "ssl_ca": "CA"}, "is preferred, but ssl_ca is set"),
        ({"ssl_mode": "disabled", "ssl_verify_cert": True}, "is disabled, but ssl_verify_cert"),
        ({"ssl_key": "CA"}, "KUBEVENTS_MYSQL_SSL_KEY (or the pipeline's mysql.ssl_key) is set"),
        (
            {"ssl_mode": "required", "ssl_verify_cert": False, "ssl_verify_identity": True},
            "needs the certificate verified",
        ),
        ({"ssl_ca": "/nowhere/ca.pem"}, "MySQL TLS file '/nowhere/ca.pem', set by"),
    ],
)
def test_contradictions_are_one_line_user_errors(
    pem: Path, options: dict[str, Any], message: str
) -> None:
    options = {k: (pem if v == "CA" else v) for k, v in options.items()}
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        tls_of(**options)
    assert "\n" not in str(caught.value)


def test_the_url_query_forms_users_copy(pem: Path) -> None:
    url, tls = resolve(
        MySQLSinkSettings(), make_url(f"{URL}?ssl_ca={pem}&ssl_check_hostname=false&charset=x")
    )
    assert tls == TLS("required", ca=pem, verify_cert=True, verify_identity=False)
    assert dict(url.query) == {"charset": "x"}  # the ssl_* ones never reach SQLAlchemy
    assert tls_of(f"{URL}?ssl_disabled=true").mode == "disabled"
    assert tls_of(f"{URL}?ssl_mode=REQUIRED&ssl_verify_cert=0").verify_cert is False
    # the same in both places is fine; different is refused
    assert tls_of(f"{URL}?ssl_ca={pem}", ssl_ca=pem).ca == pem
    with pytest.raises(UserError, match="disagree"):
        tls_of(f"{URL}?ssl_verify_cert=false", ssl_verify_cert=True)


@pytest.mark.parametrize("query", ["ssl_cipher=AES", "ssl_capath=/etc/ssl", "ssl=1"])
def test_other_ssl_query_parameters_point_at_the_settings(query: str) -> None:
    with pytest.raises(UserError, match="KUBEVENTS_MYSQL_SSL_MODE/_CA/_CERT/_KEY") as caught:
        tls_of(f"{URL}?{query}")
    assert f"?{query.partition('=')[0]}= is not supported" in str(caught.value)


def test_a_ca_file_without_a_certificate_is_a_user_error(pem: Path) -> None:
    with pytest.raises(UserError, match="holds no usable PEM certificate"):
        context(TLS("required", ca=pem, verify_cert=True, verify_identity=True))


def test_environment_variables_and_pipeline_overrides(
    monkeypatch: pytest.MonkeyPatch, pem: Path
) -> None:
    for key in [k for k in os.environ if k.startswith("KUBEVENTS_")]:
        monkeypatch.delenv(key)  # the stack's env would add its own default pipelines
    monkeypatch.setenv("KUBEVENTS_MYSQL_URL", URL)
    monkeypatch.setenv("KUBEVENTS_MYSQL_SSL_CA", str(pem))
    monkeypatch.setenv("KUBEVENTS_MYSQL_SSL_VERIFY_IDENTITY", "false")
    monkeypatch.setenv("KUBEVENTS_MYSQL_SSL_CERT", "")  # empty: unset, not the current directory
    settings = Settings(
        pipelines=[
            {"id": "a", "sink": "mysql"},
            {"id": "b", "sink": "mysql", "mysql": {"ssl_verify_identity": True}},
        ]
    )
    a, b = (p.mysql for p in settings.sink_pipelines())
    assert a is not None and b is not None
    assert (a.ssl_ca, a.ssl_cert, a.ssl_verify_identity) == (pem, None, False)
    assert (b.ssl_ca, b.ssl_verify_identity) == (pem, True)
