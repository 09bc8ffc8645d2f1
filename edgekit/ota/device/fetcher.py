"""The device's one network seam: every byte the updater reads or sends goes through a :class:`Fetcher`.

The TUF metadata (through :class:`TufFetcher`, python-tuf's ``FetcherInterface``), the target files
(resumed with HTTP Range), enrolment and outcome reports all use the same fetcher, so a test or
another platform swaps the transport without touching the update logic (python-tuf's
``ngclient/fetcher.py`` is the model). :class:`UrllibFetcher`, the default, is the one place that
translates the standard library's HTTP errors into :class:`HttpError` and :class:`FetchError`.
"""

from __future__ import annotations

import abc
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

CHUNK = 1 << 16


class FetchError(Exception):
    """The server could not be reached, or the connection broke."""


class HttpError(FetchError):
    """The server answered with an error status (``status``; the start of its ``body``)."""

    def __init__(self, url: str, status: int, body: bytes = b"") -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.url, self.status, self.body = url, status, body[:1000]


class Response(AbstractContextManager["Response"]):
    """A successful answer being read: ``status`` (200, or 206 for a range) and ``read`` in chunks."""

    status: int

    @abc.abstractmethod
    def read(self, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes of the body; ``b""`` at its end.

        Raises:
            FetchError: The connection broke.
        """

    def close(self) -> None:
        """Release the connection."""

    def __exit__(self, *exc: object) -> None:
        self.close()


class Fetcher(abc.ABC):
    """How the device reaches the service; subclasses fill in :meth:`get` and :meth:`post`."""

    @abc.abstractmethod
    def get(self, url: str, *, offset: int = 0) -> Response:
        """Start reading ``url`` (from byte ``offset``, by an HTTP Range request, when it is above 0).

        Raises:
            HttpError: The server answered with an error status.
            FetchError: The server could not be reached.
        """

    @abc.abstractmethod
    def post(self, url: str, body: bytes, *, token: str | None = None) -> bytes:
        """POST a JSON ``body`` (with a bearer ``token``) and return the answer's body.

        Raises:
            HttpError: The server answered with an error status.
            FetchError: The server could not be reached.
        """


class UrllibFetcher(Fetcher):
    """The default fetcher: the standard library's urllib, with one timeout for connecting and each read."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    def get(self, url: str, *, offset: int = 0) -> Response:
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        return _UrllibResponse(self._open(request))

    def post(self, url: str, body: bytes, *, token: str | None = None) -> bytes:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        with self._open(urllib.request.Request(url, data=body, method="POST", headers=headers)) as answer:
            try:
                return bytes(answer.read())
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"reading the answer from {url} failed: {type(exc).__name__}: {exc}") from exc

    def _open(self, request: urllib.request.Request) -> Any:
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 (the configured server's URL)
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except (OSError, http.client.HTTPException):
                body = b""
            raise HttpError(request.full_url, exc.code, body) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"{request.full_url}: {type(exc).__name__}: {reason}") from exc


class _UrllibResponse(Response):
    def __init__(self, answer: Any) -> None:
        self._answer = answer
        self.status = int(answer.status)

    def read(self, size: int = CHUNK) -> bytes:
        try:
            return bytes(self._answer.read(size))
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"the connection broke: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._answer.close()


def tuf_fetcher(fetcher: Fetcher) -> Any:
    """python-tuf's ``FetcherInterface`` on top of ``fetcher`` (metadata goes through the same seam)."""
    from tuf.api import exceptions
    from tuf.ngclient import FetcherInterface

    class TufFetcher(FetcherInterface):
        def _fetch(self, url: str) -> Iterator[bytes]:
            try:
                response = fetcher.get(url)
            except HttpError as exc:  # ngclient reads 403/404 as "no newer root"
                raise exceptions.DownloadHTTPError(str(exc), exc.status) from exc
            except FetchError as exc:
                raise exceptions.DownloadError(str(exc)) from exc
            return _chunks(response, exceptions.DownloadError)

    return TufFetcher()


def _chunks(response: Response, error: type[Exception]) -> Iterator[bytes]:
    with response:
        while True:
            try:
                chunk = response.read(CHUNK)
            except FetchError as exc:
                raise error(str(exc)) from exc
            if not chunk:
                return
            yield chunk
