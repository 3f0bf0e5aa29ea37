"""A thin, typed Kubernetes API client for list, watch, get and Lease updates.

The official client loads the configuration (kubeconfig, in-cluster, exec plugins, token refresh);
requests go through urllib3 directly and return plain JSON. Why not the generated API classes:
list/watch of 100k events through its model classes costs most of the producer's CPU, and the
pipeline wants the object exactly as the API server sent it anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import urllib3
from kubernetes import config as kube_config
from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException

from app.errors import UserError
from app.settings import KubernetesSettings


class ApiError(Exception):
    def __init__(self, status: int, reason: str, body: str, path: str):
        super().__init__(f"{status} {reason} on {path}: {body[:300]}")
        self.status, self.reason, self.body, self.path = status, reason, body, path


class RateLimiter:
    """Token bucket shared by every request of one client, like client-go's QPS/burst: the
    API server's own guard is its priority-and-fairness queue; this keeps kubevents polite."""

    def __init__(self, qps: float, burst: int):
        self._qps, self._burst = qps, float(burst)
        self._tokens, self._last = float(burst), time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self._qps
            time.sleep(wait)


def load_configuration(settings: KubernetesSettings) -> Configuration:
    """In-cluster config, else the kubeconfig; a bad one is a UserError naming the file."""
    cfg = Configuration()
    explicit = settings.kubeconfig
    if explicit is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            kube_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            return cfg
        except ConfigException as exc:
            raise UserError(f"in-cluster Kubernetes config unusable: {exc}") from None
    path = str(explicit or os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
    path = path.split(os.pathsep, maxsplit=1)[0]
    if not Path(path).is_file():
        raise UserError(
            f"kubeconfig {path!r} does not exist: set KUBEVENTS_KUBERNETES_KUBECONFIG or KUBECONFIG"
            " to a kubeconfig file, or run inside a cluster"
        )
    try:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=path, context=settings.context, client_configuration=cfg
        )
    except (ConfigException, ValueError, KeyError, TypeError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"kubeconfig {path!r} is not usable ({detail}): check it with"
            " 'kubectl --kubeconfig <file> cluster-info'"
        ) from None
    except Exception as exc:  # yaml errors and the like surface as various types
        raise UserError(f"kubeconfig {path!r} could not be parsed: {exc}") from None
    return cfg


class KubeClient:
    def __init__(
        self,
        cfg: Configuration,
        *,
        qps: float,
        burst: int,
        timeout_s: float,
        limiter: RateLimiter | None = None,
    ):
        self.cfg = cfg
        self.host = cfg.host.rstrip("/")
        self.timeout_s, self.qps, self.burst = timeout_s, qps, burst
        self.limiter = limiter or RateLimiter(qps, burst)
        pool_kwargs: dict[str, Any] = {"maxsize": 8}
        if self.host.startswith("https"):
            if cfg.verify_ssl:
                pool_kwargs["cert_reqs"] = ssl.CERT_REQUIRED
                pool_kwargs["ca_certs"] = cfg.ssl_ca_cert
            else:
                pool_kwargs["cert_reqs"] = ssl.CERT_NONE
            if cfg.cert_file:
                pool_kwargs["cert_file"] = cfg.cert_file
                pool_kwargs["key_file"] = cfg.key_file
            if cfg.tls_server_name:
                pool_kwargs["server_hostname"] = cfg.tls_server_name
        self.http = urllib3.PoolManager(**pool_kwargs)
        self._watch_resp: urllib3.BaseHTTPResponse | None = None

    @classmethod
    def from_settings(cls, settings: KubernetesSettings) -> KubeClient:
        return cls(
            load_configuration(settings),
            qps=settings.qps,
            burst=settings.burst,
            timeout_s=settings.request_timeout_s,
        )

    def clone(self) -> KubeClient:
        """A client with its own connections (one per watch) sharing the rate limit."""
        return KubeClient(
            self.cfg, qps=self.qps, burst=self.burst, timeout_s=self.timeout_s, limiter=self.limiter
        )

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "kubevents"}
        auth = self.cfg.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            headers["Authorization"] = str(auth["value"])
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        *,
        stream: bool = False,
        timeout_s: float | None = None,
    ) -> urllib3.BaseHTTPResponse:
        self.limiter.acquire()
        url = self.host + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        try:
            resp = self.http.request(
                method,
                url,
                body=data,
                headers=self._headers("application/json" if data else None),
                preload_content=not stream,
                timeout=urllib3.Timeout(connect=10.0, read=timeout_s or self.timeout_s),
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionError(
                f"cannot reach the Kubernetes API server at {self.host}: {exc.__class__.__name__}"
                f" ({exc}); check the server address in the kubeconfig and that the cluster is up"
            ) from exc
        if resp.status >= 400:
            text = (
                resp.data.decode(errors="replace")
                if not stream
                else resp.read().decode(errors="replace")
            )
            raise ApiError(resp.status, resp.reason or "", text, path)
        return resp

    def get_json(self, path: str, query: dict[str, Any] | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(self.get_bytes(path, query))
        return doc

    def get_bytes(self, path: str, query: dict[str, Any] | None = None) -> bytes:
        return bytes(self.request("GET", path, query).data)

    def send_json(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.request(method, path, body=body)
        doc: dict[str, Any] = json.loads(resp.data)
        return doc

    def watch_batches(
        self, path: str, query: dict[str, Any], timeout_s: float, stop: threading.Event
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield watch notifications ({'type', 'object'}), a list per chunk read, until the server
        ends the watch or ``stop`` is set (``interrupt`` closes the socket to wake us)."""
        resp = self.request(
            "GET", path, {**query, "watch": "true"}, stream=True, timeout_s=timeout_s
        )
        self._watch_resp = resp
        try:
            buffer = b""
            for chunk in resp.stream(256 * 1024, decode_content=True):
                if stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                batch = [orjson.loads(line) for line in lines if line.strip()]
                if batch:
                    yield batch
            if buffer.strip() and not stop.is_set():
                yield [orjson.loads(buffer)]
        except urllib3.exceptions.HTTPError as exc:
            if stop.is_set():
                return
            raise ConnectionError(f"watch connection lost: {exc}") from exc
        finally:
            self._watch_resp = None
            resp.release_conn()

    def interrupt(self) -> None:
        """Wake a thread blocked reading a watch (used on shutdown and on losing the lease)."""
        resp = self._watch_resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()

    def close(self) -> None:
        self.http.clear()


def explain_api_error(exc: Exception, what: str) -> str:
    """One line for a failed API call: what went wrong and what to do."""
    if isinstance(exc, ApiError):
        if exc.status == 401:
            return (
                f"the Kubernetes API server rejected the credentials (401) while trying to"
                f" {what}: refresh the kubeconfig's token or certificate"
            )
        if exc.status == 403:
            return (
                f"permission denied (403) to {what}: {_message(exc.body)}; grant it with the"
                " ClusterRole in deploy/kubernetes/rbac.yaml"
            )
        if exc.status == 404:
            return f"not found (404) while trying to {what}: is the API ({exc.path}) served?"
        return f"the Kubernetes API server answered {exc.status} to {what}: {_message(exc.body)}"
    return str(exc)


def _message(body: str) -> str:
    try:
        return str(json.loads(body).get("message", body))
    except ValueError:
        return body[:200]
