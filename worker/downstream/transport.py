"""HTTP for the downstream client: libcurl, through pycurl, on keep-alive connections.

Why libcurl and not ``requests`` (or the ``urllib3`` under it): a worker's CPU per item is mostly its
three or four downstream calls, and a call costs about 180 µs of CPU through pycurl against about
410 µs through urllib3 and 670 µs through requests on the same machine (the parsing of the answer
and the sending of the request happen in C; Python only hands over the bytes). See
docs/performance.md.

A curl handle is not safe across threads, so each thread of the worker keeps its own, and with it its
own keep-alive connection to the downstream. libcurl releases the GIL while a call is under way.

Proxies and CA certificates come from the standard variables, read once as ``requests`` reads them
(``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``), so that a deployment
behind a proxy works as it did with ``requests``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import pycurl
import requests


class TransportError(Exception):
    """No answer: the connection could not be made, or broke."""


class TransportTimeout(TransportError):
    """No answer within the timeout."""


@dataclass(frozen=True)
class Answer:
    """What came back: the status, the headers (names in lower case; the last of a repeated one) and the
    raw body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class CurlTransport:
    """Requests to one downstream, from any thread; ``timeout`` (seconds) bounds each whole call."""

    def __init__(self, base_url: str, *, timeout: float) -> None:
        self.timeout_ms = max(1, int(timeout * 1000))
        found = requests.Session().merge_environment_settings(base_url, {}, None, None, None)
        scheme = base_url.split("://", 1)[0].lower()
        self._proxy = found["proxies"].get(scheme) or found["proxies"].get("all") or ""
        verify = found["verify"]
        self._verify = verify is not False
        self._ca_file = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
        self._local = threading.local()

    def request(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Answer:
        """One call. Raises :class:`TransportTimeout` or :class:`TransportError` when nothing came back."""
        curl = self._handle()
        buffer = io.BytesIO()
        received: dict[str, str] = {}

        def header_line(raw: bytes) -> None:
            line = raw.decode("iso-8859-1")
            if line.startswith("HTTP/"):
                received.clear()  # a new response's headers (after a 100 Continue, say)
                return
            name, sep, value = line.partition(":")
            if sep:
                received[name.strip().lower()] = value.strip()

        curl.setopt(pycurl.URL, url)
        curl.setopt(pycurl.WRITEDATA, buffer)
        curl.setopt(pycurl.HEADERFUNCTION, header_line)
        # "Expect:" off: curl would otherwise wait for a 100 Continue before sending a body over 1 KB.
        curl.setopt(pycurl.HTTPHEADER, [f"{k}: {v}" for k, v in headers.items()] + ["Expect:"])
        if body is None:
            curl.setopt(pycurl.HTTPGET, 1)
        else:
            curl.setopt(pycurl.POSTFIELDS, body)
        curl.setopt(pycurl.CUSTOMREQUEST, method)
        try:
            curl.perform()
        except pycurl.error as exc:
            code = exc.args[0] if exc.args else 0
            # The handle may hold a half-used connection: start the next call on a clean one.
            self._local.curl = None
            curl.close()
            if code == pycurl.E_OPERATION_TIMEDOUT:
                raise TransportTimeout(f"no answer within {self.timeout_ms} ms") from exc
            raise TransportError(_CURL_ERRORS.get(code, f"curl error {code}")) from exc
        return Answer(curl.getinfo(pycurl.RESPONSE_CODE), received, buffer.getvalue())

    def _handle(self) -> pycurl.Curl:
        curl = getattr(self._local, "curl", None)
        if curl is None:
            curl = self._local.curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)  # timeouts by signals are not for threads
            curl.setopt(pycurl.TIMEOUT_MS, self.timeout_ms)
            curl.setopt(pycurl.CONNECTTIMEOUT_MS, self.timeout_ms)
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            curl.setopt(pycurl.PROXY, self._proxy)  # "" : no proxy, whatever libcurl's own variables say
            curl.setopt(pycurl.SSL_VERIFYPEER, 1 if self._verify else 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 2 if self._verify else 0)
            if self._verify and self._ca_file:
                curl.setopt(pycurl.CAINFO, self._ca_file)
        return curl


#: The failures a reader of a log can act on, by libcurl's code; others are named by number.
_CURL_ERRORS = {
    pycurl.E_COULDNT_RESOLVE_HOST: "the downstream's host name did not resolve",
    pycurl.E_COULDNT_CONNECT: "the connection was refused or could not be made",
    pycurl.E_GOT_NOTHING: "the downstream closed the connection without an answer",
    pycurl.E_SEND_ERROR: "the connection broke while sending",
    pycurl.E_RECV_ERROR: "the connection broke while receiving",
    pycurl.E_SSL_CONNECT_ERROR: "the TLS handshake failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "the downstream's TLS certificate did not verify",
}
