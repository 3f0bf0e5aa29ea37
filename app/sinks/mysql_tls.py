"""TLS of the MySQL sink: its settings (and the ``ssl_*`` query forms of the URL) resolved into
what PyMySQL is given, and TLS failures worded as what the user must change.

Pure functions, so that every combination is checked without a server; app/sinks/mysql.py calls
``resolve`` before it builds its engine and ``ssl_args`` for the engine's ``connect_args``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import URL

from app.errors import UserError
from app.settings import MySQLSinkSettings

Mode = Literal["disabled", "preferred", "required"]
MODES: tuple[Mode, ...] = ("disabled", "preferred", "required")
# A URL query key users copy from SQLAlchemy's and PyMySQL's documentation -> our field.
# ssl_check_hostname is SQLAlchemy's name for PyMySQL's ssl_verify_identity.
URL_KEYS = {
    "ssl_ca": "ssl_ca",
    "ssl_cert": "ssl_cert",
    "ssl_key": "ssl_key",
    "ssl_verify_cert": "ssl_verify_cert",
    "ssl_verify_identity": "ssl_verify_identity",
    "ssl_check_hostname": "ssl_verify_identity",
    "ssl_disabled": "ssl_mode",
    "ssl_mode": "ssl_mode",
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def setting(field: str) -> str:
    """How the user sets ``field``: its variable and its key in a pipeline."""
    return f"KUBEVENTS_MYSQL_{field.upper()} (or the pipeline's mysql.{field})"


@dataclass(frozen=True)
class TLS:
    """The TLS a connection uses, every default decided."""

    mode: Mode
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify_cert: bool = False
    verify_identity: bool = False


def _bool(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UserError(f"the MySQL URL's ?{key}= must be true or false, not {value!r}")


def from_url(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL without its ``ssl_*`` query parameters, and those as settings fields.

    They are accepted because users copy them from SQLAlchemy's documentation; left in the URL,
    SQLAlchemy would hand them to PyMySQL as an ``ssl`` dict that the sink's own ``ssl`` argument
    silently replaces."""
    found: dict[str, Any] = {}
    for key, raw in url.query.items():
        if not key.startswith("ssl"):
            continue
        value = raw[-1] if isinstance(raw, tuple) else raw
        field = URL_KEYS.get(key)
        if field is None:
            known = ", ".join(k for k in URL_KEYS if k != "ssl_mode")
            raise UserError(
                f"the MySQL URL's ?{key}= is not supported: use {known} in the URL, or the"
                " settings KUBEVENTS_MYSQL_SSL_MODE/_CA/_CERT/_KEY/_VERIFY_CERT/_VERIFY_IDENTITY"
            )
        if key == "ssl_disabled":
            found[field] = "disabled" if _bool(key, value) else None
        elif key == "ssl_mode":
            if value.lower() not in MODES:
                raise UserError(f"the MySQL URL's ?ssl_mode= must be one of {', '.join(MODES)}")
            found[field] = value.lower()
        elif field in ("ssl_verify_cert", "ssl_verify_identity"):
            found[field] = _bool(key, value)
        else:
            found[field] = Path(value)
    found = {k: v for k, v in found.items() if v is not None}
    return url.difference_update_query([k for k in url.query if k in URL_KEYS]), found


def resolve(options: MySQLSinkSettings, url: URL) -> tuple[URL, TLS]:
    """The URL to connect to and its TLS, from the settings and the URL's ``ssl_*`` parameters
    (given in both places, they must agree). A contradiction is a UserError naming the settings."""
    url, in_url = from_url(url)
    fields: dict[str, Any] = {}
    for field in (
        "ssl_mode",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "ssl_verify_cert",
        "ssl_verify_identity",
    ):
        mine = getattr(options, field)
        if mine is not None and field in in_url and in_url[field] != mine:
            raise UserError(
                f"{setting(field)} and the MySQL URL's ssl query parameter disagree: set one"
            )
        fields[field] = mine if mine is not None else in_url.get(field)
    ca, cert, key = fields["ssl_ca"], fields["ssl_cert"], fields["ssl_key"]
    verify_cert, verify_identity = fields["ssl_verify_cert"], fields["ssl_verify_identity"]
    wants_tls = [
        name
        for name, value in (
            ("ssl_ca", ca),
            ("ssl_cert", cert),
            ("ssl_key", key),
            ("ssl_verify_cert", verify_cert is True),
            ("ssl_verify_identity", verify_identity is True),
        )
        if value
    ]
    mode: Mode = fields["ssl_mode"] or ("required" if wants_tls else "preferred")
    if mode != "required":
        if wants_tls:
            raise UserError(
                f"{setting('ssl_mode')} is {mode}, but {wants_tls[0]} is set, which needs TLS:"
                " set ssl_mode to required (or leave it unset)"
            )
        return url, TLS(mode)
    if key is not None and cert is None:
        raise UserError(f"{setting('ssl_key')} is set without ssl_cert: set both, or neither")
    # A CA given means "verify against it"; and TLS required means verified unless told not to.
    verify = verify_cert is not False
    identity = verify if verify_identity is None else verify_identity
    if identity and not verify:
        raise UserError(
            f"{setting('ssl_verify_identity')} needs the certificate verified: unset"
            " ssl_verify_cert=false, or set ssl_verify_identity=false too"
        )
    for field, path in (("ssl_ca", ca), ("ssl_cert", cert), ("ssl_key", key)):
        if path is not None and not path.is_file():
            raise UserError(
                f"MySQL TLS file {str(path)!r}, set by {setting(field)}, does not exist or is"
                " not a file: mount it there, or correct the path"
            )
    return url, TLS(mode, ca, cert, key, verify, identity)


def context(tls: TLS) -> ssl.SSLContext:
    """The SSLContext of a connection with TLS required.

    Built here rather than passed as PyMySQL's ssl_ca/ssl_verify_cert/ssl_verify_identity because
    those do not mean what our settings say (PyMySQL 1.2, connections.py): ``ssl_ca`` alone leaves
    ``ssl_verify_cert`` off, so a CA given would verify nothing; without ``ssl_ca`` the host name
    is never checked, even with ``ssl_verify_identity``; and ``ssl_verify_cert=False`` without a
    file falls back to PyMySQL's "preferred" mode, i.e. silently plain when the server offers no
    TLS. An SSLContext is used as given, and always makes TLS required."""
    try:
        ctx = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    except (ssl.SSLError, OSError) as exc:
        raise UserError(
            f"MySQL CA file {str(tls.ca)!r} ({setting('ssl_ca')}) holds no usable PEM"
            f" certificate ({exc}): give the CA's certificate in PEM form"
        ) from None
    # As PyMySQL does: Python 3.13 turned on strict X.509 checks, which the certificates MySQL
    # generates for itself fail; the same result whatever the Python.
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    ctx.check_hostname = tls.verify_identity  # before verify_mode: CERT_NONE refuses it on
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_cert else ssl.CERT_NONE
    if tls.cert is not None:
        try:
            ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
        except (ssl.SSLError, OSError) as exc:
            raise UserError(
                f"MySQL client certificate {str(tls.cert)!r} and key"
                f" {str(tls.key) if tls.key else '(in the same file)'} cannot be loaded ({exc}):"
                f" set {setting('ssl_cert')} and ssl_key to a PEM certificate and its own key"
            ) from None
    return ctx


def ssl_args(tls: TLS) -> dict[str, Any]:
    """PyMySQL's connect arguments for ``tls``."""
    if tls.mode == "disabled":
        return {"ssl_disabled": True}
    if tls.mode == "preferred":
        return {}  # PyMySQL's default: TLS if the server offers it, unverified
    return {"ssl": context(tls)}


def handshake_error(exc: BaseException, tls: TLS, where: str) -> UserError | None:
    """A TLS failure at connect as the setting to change; None if ``exc`` is not one.

    PyMySQL reports a failed handshake as error 2003 ("can't connect"), which alone would read
    as the server being down and be retried forever; the ssl error it wraps says otherwise."""
    cause = getattr(exc, "original_exception", None)
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = cause.verify_message or str(cause)
        if cause.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return UserError(
                f"MySQL at {where}: its TLS certificate does not name that host ({reason}):"
                " connect by a name the certificate holds, or set"
                f" {setting('ssl_verify_identity')} to false"
            )
        signer = (
            f"the CA file {str(tls.ca)!r} did not sign it" if tls.ca else "no system CA signed it"
        )
        return UserError(
            f"MySQL at {where}: its TLS certificate failed verification ({reason}; {signer}):"
            f" set {setting('ssl_ca')} to the CA that signed the server's certificate"
        )
    if isinstance(cause, ssl.SSLError):
        return UserError(
            f"MySQL at {where}: the TLS handshake failed ({cause.reason or cause}): check the"
            " server's TLS and KUBEVENTS_MYSQL_SSL_* (the pipeline's mysql.ssl_*)"
        )
    return None
