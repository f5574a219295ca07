"""HTTP-level limits of ``artclf serve``, below the app: the request body's size (ASGI
middleware), the time a request may take to arrive (uvicorn's h11 protocol with a deadline),
and a JSON 500 for an exception inside a route (ASGI middleware)."""

import asyncio
import json
import sys


class BodyTooLarge(Exception):
    """The body streamed past the limit (no Content-Length to refuse it by)."""


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by its Content-Length or as it streams."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _json(send, 400, f"bad Content-Length {length.decode(errors='replace')!r}")
            if int(length) > self.max_bytes:
                return await _json(send, 413, self._detail(int(length)))
        seen, sent = 0, _Tracked(send)

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self._detail(seen))
            return message

        try:
            await self.app(scope, counted_receive, sent)
        except BodyTooLarge as e:  # raised outside a route that turns it into a 413 itself
            if not sent.started:
                await _json(send, 413, str(e))

    def _detail(self, n: int) -> str:
        return f"request body of {n} bytes or more is over the limit of {self.max_bytes} bytes"


class InternalErrors:
    """ASGI middleware inside FastAPI's own (which answers a plain-text 500 and lets uvicorn log
    a traceback): an exception from a route becomes a 500 ``{"detail": "internal error: Type:
    message"}`` and one line on stderr; the connection is closed after it, as after a 413."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = _Tracked(send)
        try:
            await self.app(scope, receive, sent)
        except BodyTooLarge:  # BodyLimit's, outside FastAPI: a 413
            raise
        except Exception as e:
            what = " ".join(f"{type(e).__name__}: {e}".split())[:500]  # one line
            after = " after the response started: connection closed" if sent.started else ""
            print(f"artclf serve: {scope['method']} {scope['path']}: 500 internal error{after}: {what}",
                  file=sys.stderr, flush=True)  # fmt: skip
            if not sent.started:
                await _json(send, 500, f"internal error: {what}")


class _Tracked:
    """An ASGI ``send`` that remembers whether the response has started (then no error
    response can be sent any more, only the connection closed)."""

    def __init__(self, send) -> None:
        self.send, self.started = send, False

    async def __call__(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


CLOSE = {"connection": "close"}  # after a refused body: do not read the rest of it


async def _json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in CLOSE.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_TIMEOUT_BODY = json.dumps({"detail": "request not received in time: connection closed"}).encode()
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + f"content-length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _TIMEOUT_BODY
)


def timed_protocol(timeout: float):
    """uvicorn's h11 protocol with a deadline on reading each request: ``timeout`` seconds from
    a connection's start (or its previous response) until the request's headers and body are
    in. uvicorn itself times out only idle keep-alive connections, so a client trickling its
    headers or body (slowloris) would hold a connection, and a ``--max-connections`` slot, for
    ever. On expiry: 408 if no response was started, then the connection is closed; a request
    already read in full is never cut (inference time is not limited here)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            between = cycle is None or cycle.response_complete  # the next request's headers not in
            if not (between or cycle.more_body):
                return  # read in full: the app is answering it
            self.logger.warning("%s: request not received within %.0f s: 408, closed", self.client, timeout)
            if between or not cycle.response_started:
                self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()

    return TimedH11Protocol
