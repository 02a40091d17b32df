"""Where an HTTP/1.x request ends, told from the bytes received so far: pure rules, no I/O.

The worker (``worker.py``) reads each request in its event loop and gives a
thread only whole ones; ``RequestScanner`` says when one is whole. It only
frames: Gunicorn's parser still parses and validates every request from the
buffered bytes. Whatever this module cannot frame with certainty (no single
plain Content-Length, a Transfer-Encoding not ending in chunked, a bad chunk
size line, a bare LF) is handed over as it is, marked ``truncated``, so that
Gunicorn rejects it at once instead of anyone waiting for more bytes, and the
connection is closed after the answer. A chunked body that will not fit
``max_body`` is never handed over: ``body_too_large`` says so as soon as a
chunk-size line takes it past the limit, for the worker to answer 413.

Hand-written because the framing must match Gunicorn's parser, not a stricter
one: h11, for one, refuses requests (no Host header) that Gunicorn serves.
"""

from __future__ import annotations

_HEX = frozenset(b"0123456789abcdefABCDEF")


class RequestScanner:
    """Follow one request's bytes as they arrive and say when it is all here.

    ``max_head`` bounds the request line and headers (beyond it: ``too_large``);
    ``max_body`` bounds the body kept in memory: a longer one declared by
    Content-Length is handed over without its body (``truncated``) for the app
    to answer 413 from the header; a longer chunked one is ``body_too_large``.
    """

    def __init__(self, max_head: int, max_body: int, data: bytes = b""):
        self.max_head = max_head
        self.max_body = max_body
        self.buf = bytearray()
        self.head_end: int | None = None  # offset just past the blank line that ends the head
        self.end: int | None = None  # offset just past the request, once it can be handed over
        self.truncated = False  # handed over without (all of) its body: close the connection after
        self.too_large = False  # the head is longer than max_head
        self.body_too_large = False  # chunked, and its chunk sizes add up to more than max_body
        self.method = self.path = b""
        self.version = b""
        self.content_length: int | None = None  # None: chunked, or handed over at the head
        self.chunked = False
        self.expects_continue = False
        self._pos = 0  # chunked: where scanning resumes
        self._left = 0  # chunked: bytes of the current chunk's data (and its CRLF) still to come
        self._trailers = False  # chunked: the last chunk was seen, trailers follow
        self._payload = 0  # chunked: data bytes announced by the size lines so far
        self.feed(data)

    @property
    def ready(self) -> bool:
        """The request can be handed over (whole, or truncated for Gunicorn to reject)."""
        return self.end is not None

    @property
    def body_bytes(self) -> int:
        """Bytes of body this request holds in memory, or will once it is all here."""
        if self.head_end is None or self.truncated:
            return 0
        if self.content_length is not None:
            return self.content_length
        return self.body_received()

    def body_received(self) -> int:
        """Bytes received after the head (up to the end of this request, once known)."""
        if self.head_end is None:
            return 0
        return (len(self.buf) if self.end is None else self.end) - self.head_end

    def feed(self, data: bytes) -> None:
        """Take more bytes from the connection (any that follow the request are kept for the next)."""
        searched = max(0, len(self.buf) - 3)
        self.buf += data
        if self.end is not None or self.too_large or self.body_too_large:
            return
        if self.head_end is None:
            self._find_head(searched)
        if self.head_end is None or self.end is not None or self.too_large:
            return
        if self.chunked:
            self._scan_chunks()
        elif len(self.buf) >= self.head_end + self.content_length:
            self.end = self.head_end + self.content_length

    def remaining(self) -> int:
        """Bytes of a body of known length still to come (0 when unknown)."""
        if self.head_end is None or self.content_length is None or self.end is not None:
            return 0
        return self.head_end + self.content_length - len(self.buf)

    def take(self) -> tuple[bytearray, bytes]:
        """(this request's bytes, the bytes after it), letting go of the buffer; call once ``ready``."""
        assert self.end is not None
        request, self.buf = self.buf, bytearray()
        with memoryview(request) as view:
            rest = bytes(view[self.end:])
        del request[self.end:]  # in place: a 32 MiB body is not copied again
        return request, rest

    def _find_head(self, searched: int) -> None:
        buf = self.buf
        start = 2 if buf[:2] == b"\r\n" else 0  # one empty line before the request line is allowed
        searched = max(start, searched)
        end = buf.find(b"\r\n\r\n", searched)
        limit = len(buf) if end < 0 else end
        # Only the new bytes are checked (each \n at p counts once, with the \r at p - 1 if any).
        if buf.count(b"\n", searched, limit) != buf.count(b"\r\n", max(0, searched - 1), limit):
            self._hand_over(len(buf))  # a bare LF: Gunicorn refuses it with 400
            return
        if end < 0:
            self.too_large = len(buf) > self.max_head
            return
        self.head_end = end + 4
        if self.head_end > self.max_head:
            self.too_large = True
            return
        self._read_head(bytes(buf[start:end]))

    def _read_head(self, head: bytes) -> None:
        request_line, *lines = head.split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) == 3:
            self.method, target, self.version = parts
            self.path = target.split(b"?", 1)[0]
        lengths, codings = [], []
        for line in lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip(b" \t")
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings += [c.strip(b" \t").lower() for c in value.split(b",")]
            elif name == b"expect":
                self.expects_continue = value.lower() == b"100-continue" and self.version == b"HTTP/1.1"

        if codings:
            if codings[-1] != b"chunked" or lengths:
                self._hand_over(self.head_end)  # Gunicorn answers 400 (RFC 9112 6.1, 6.3)
                return
            self.chunked = True
            self._pos = self.head_end
            return
        if len(lengths) > 1 or (lengths and not lengths[0].isdigit()):
            self._hand_over(self.head_end)
            return
        self.content_length = int(lengths[0]) if lengths else 0
        if self.content_length > self.max_body:
            self.content_length = None
            self._hand_over(self.head_end)  # the app answers 413 from the header alone

    def _scan_chunks(self) -> None:
        buf, pos = self.buf, self._pos
        while True:
            if self._left:
                step = min(self._left, len(buf) - pos)
                pos += step
                self._left -= step
                if self._left:
                    break
            if self._trailers:
                if buf[pos:pos + 2] == b"\r\n":
                    self.end = pos + 2
                    return
                end = buf.find(b"\r\n\r\n", pos)
                if end >= 0:
                    self.end = end + 4
                    return
                # A bare LF (Gunicorn refuses it at once), or more trailers than any head may hold.
                if buf.count(b"\n", pos) != buf.count(b"\r\n", pos) or len(buf) - pos > self.max_head:
                    self._hand_over(len(buf))
                    return
                break
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 8192:  # a chunk-size line longer than Gunicorn accepts
                    self._hand_over(len(buf))
                    return
                break
            size, _, extension = bytes(buf[pos:eol]).partition(b";")
            size = size.rstrip(b" \t") if extension else size
            if not size or not _HEX.issuperset(size):
                self._hand_over(len(buf))  # Gunicorn answers 400
                return
            pos = eol + 2
            chunk = int(size, 16)
            if self._payload + chunk > self.max_body:
                self.body_too_large = True  # known from the size line: none of this chunk is waited for
                return
            self._payload += chunk
            if chunk == 0:
                self._trailers = True
            else:
                self._left = chunk + 2
        self._pos = pos

    def _hand_over(self, end: int) -> None:
        self.end = end
        self.truncated = True
