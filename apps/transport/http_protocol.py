"""A uvicorn HTTP protocol (httptools) that bounds what a request head may cost.

uvicorn's httptools protocol keeps a connection that sends nothing, or half a request head, for
as long as the client likes (its keep-alive timeout only starts after a response), and takes
request heads of any size. :class:`HeadLimitsProtocol` closes a connection whose request head
is not complete ``head_timeout`` seconds after the connection opened (or after the head began
arriving, on a kept-alive connection), answering 408; and refuses a head over ``max_head_bytes``
in all, or with a request line or header line over ``max_line_bytes``, with 431 (414 for the
request line). Node's HTTP server does the same (``headersTimeout``, ``maxHeaderSize``).

A response sent before its request's body has been read (a 401 before a large upload, a 413 at
a body cap) ends the connection gracefully: uvicorn would keep reading and discarding the rest of
the body for as long as the client sends it, or, with ``Connection: close``, close with the body
unread, which makes the kernel reset the connection, and a client that was still sending then
loses the response. Here the response is followed by a FIN, and what still arrives is discarded,
``linger_bytes`` at most (then nothing more is read), for ``linger_seconds`` at most, then the
connection is closed (nginx's ``lingering_close``). That holds for a request that asked to close
(``Connection: close``, or HTTP/1.0) too: uvicorn closes those itself, from the response cycle,
so its cycle is given the transport through :class:`_CloseLingers`.

The limits are class attributes: a subclass sets its own (a service sets its own).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)


#: The ``code`` of each refusal's JSON body (the service's error shape, ``{"error": {code, message}}``).
REFUSAL_CODES = {408: "REQUEST_TIMEOUT", 414: "REQUEST_LINE_TOO_LONG", 431: "REQUEST_HEAD_TOO_LARGE"}


def refusal_response(status: int, message: str) -> bytes:
    """A complete response that refuses a request head: its status line, a small JSON body in the
    service's error shape, and ``connection: close``."""
    body = json.dumps({"error": {"code": REFUSAL_CODES[status], "message": message}}).encode()
    head = f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return STATUS_LINE[status] + head.encode() + body


class _HeadRefused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class _CloseLingers:
    """The transport as one response cycle sees it: uvicorn's cycle closes the connection itself
    once it has sent a response to a request that asked to close; while that request's body is
    still unread, this lingers instead (:meth:`HeadLimitsProtocol._linger`). Everything else is
    the transport's."""

    def __init__(self, protocol: HeadLimitsProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport

    def close(self) -> None:
        self._protocol._close_after_response()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadLimitsProtocol(HttpToolsProtocol):
    #: Seconds a request head may take to arrive whole (None: no limit).
    head_timeout: float | None = 30.0
    #: Largest request head (request line and headers), and largest line in it, in bytes.
    max_head_bytes = 16 * 1024
    max_line_bytes = 8 * 1024
    #: After a response sent with its request's body unread: how much more is read and discarded.
    linger_seconds = 2.0
    linger_bytes = 1024 * 1024

    _lingering: asyncio.TimerHandle | None = None
    _lingered = 0

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _refusal: _HeadRefused | None = None
    # Between requests or in a head (not in a body, nor after an upgrade): what arrives is head.
    _in_head = True
    # Bytes received while in the current head, counted as they arrive (see data_received).
    _head_received = 0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if self._lingering is not None:  # begun by _close_after_response, before this ran
            self._cancel_keep_alive()
        elif cycle is not None and cycle.more_body and not self.transport.is_closing():
            self._linger()

    def _close_after_response(self) -> None:
        """The cycle of a request that asked to close has sent its response (see _CloseLingers)."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            if self._lingering is None:
                self._linger()
            return
        self.transport.close()

    def _cancel_keep_alive(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _linger(self) -> None:
        """The response is out and its request's body is not all read: send a FIN after it, and
        discard what still arrives for a little while (see the module docstring)."""
        self._cancel_keep_alive()
        self._stop_head_timer()
        self.flow.resume_reading()
        self._lingering = self.loop.call_later(self.linger_seconds, self.transport.close)
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _start_head_timer(self) -> None:
        if self.head_timeout is not None and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        logger.info("%s sent no complete request head within %g s; closing", _client(self), self.head_timeout)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal_response(408, f"No complete request head within {self.head_timeout:g} s"))
        self.transport.close()

    # parser callbacks (httptools calls them while feed_data parses)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url), request_line=True)
        if len(self.url) > self.max_line_bytes:
            self._refuse(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        size = len(name) + len(value) + 4
        if size > self.max_line_bytes:
            self._refuse(431, "header line too long")
        self._count(size)

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._in_head, self._head_received = False, 0
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and not cycle.keep_alive and cycle.transport is self.transport:
            cycle.transport = _CloseLingers(self, self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next is the next request's head
        super().on_message_complete()

    def _count(self, size: int, *, request_line: bool = False) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._refuse(414 if request_line else 431, "request head too large")

    def _refuse(self, status: int, why: str) -> None:
        self._refusal = _HeadRefused(status, why)
        raise self._refusal  # httptools stops parsing and feed_data raises

    def data_received(self, data: bytes) -> None:
        """uvicorn's, answering a head refused above with its own status, and refusing a head
        whose unfinished line has grown past ``max_head_bytes``; discarding what arrives after a
        response sent with its request's body unread."""
        if self._lingering is not None:
            self._lingered += len(data)
            if self._lingered > self.linger_bytes:
                self.transport.pause_reading()  # the client's sends stall; the timer closes it
            return
        self._unset_keepalive_if_required()
        # httptools keeps an unfinished header line to itself (on_header comes once the line has
        # ended), so a line that never ends would grow unchecked until head_timeout: count what
        # arrives in a head here (on_headers_complete restarts the count; the bytes of a body
        # are not counted, those of a chunk that starts in a body and ends in a head neither,
        # which bounds the undercount by one read).
        if self._in_head:
            self._head_received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            if refusal is None:
                self._stop_head_timer()
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
                return
            self._send_refusal(refusal)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        else:
            if self._in_head and self._head_received > self.max_head_bytes:
                self._send_refusal(_HeadRefused(431, "request head too large"))

    def _send_refusal(self, refusal: _HeadRefused) -> None:
        self._stop_head_timer()
        logger.info("%s: request refused (%s)", _client(self), refusal)
        # A pipelined head refused while an earlier request is unanswered: the client would take
        # the refusal for that request's answer, so it only sees the connection close (as when the head times out).
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(refusal_response(refusal.status, f"Request refused: {refusal}"))
        self.transport.close()


def _client(protocol: HttpToolsProtocol) -> str:
    client = protocol.client
    return f"{client[0]}:{client[1]}" if client else "-"
