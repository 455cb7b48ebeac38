"""The HTTP protocol the service runs under uvicorn: httptools with a deadline on request heads.

uvicorn arms its keep-alive timeout only after a response, so a client that opens a connection and
sends nothing, or a request head that never ends (a slowloris), holds the connection forever; a few
hundred of them exhaust the server's file descriptors. Here every connection must complete each
request head within ``SCF_RISK_HEADER_TIMEOUT_SECONDS`` or it is closed.
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@functools.cache
def header_timeout() -> float:
    """The deadline (seconds) of one request head, read once per worker process."""
    from serving.settings import Settings

    return Settings().header_timeout_seconds


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes a connection whose request head is not complete within
    `header_timeout()` seconds of the connection or of the request's first byte."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(header_timeout(), self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


__all__ = ["HeaderDeadlineProtocol", "header_timeout"]
