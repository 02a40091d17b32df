"""RequestScanner: when a request has all arrived, whatever pieces its bytes come in."""

from __future__ import annotations

import pytest

from clip_service.ops.request_framing import RequestScanner

MAX_HEAD, MAX_BODY = 4096, 1000

GET = b"GET /health/live?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n" + b'{"texts":1}'
CHUNKED = (b"POST /embed/text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
TRAILERS = (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n")
LEADING_CRLF = b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"


def scan_in_pieces(data: bytes, size: int) -> tuple[RequestScanner, int | None]:
    """Feed ``data`` ``size`` bytes at a time; also say after how many bytes it first became ready."""
    scanner = RequestScanner(MAX_HEAD, MAX_BODY)
    ready_at = None
    for i in range(0, len(data), size):
        scanner.feed(data[i:i + size])
        if scanner.ready and ready_at is None:
            ready_at = min(i + size, len(data))
    return scanner, ready_at


@pytest.mark.parametrize("request_bytes", [GET, POST, CHUNKED, TRAILERS, LEADING_CRLF],
                         ids=["get", "content-length", "chunked", "trailers", "leading-crlf"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_a_whole_request_is_ready_at_its_last_byte_and_not_before(request_bytes, size):
    next_request = b"GET /next HTTP/1.1\r\n"
    scanner, ready_at = scan_in_pieces(request_bytes + next_request, size)
    assert scanner.ready and not scanner.truncated
    assert ready_at is not None and len(request_bytes) <= ready_at
    assert ready_at < len(request_bytes) + size  # as soon as the piece with the last byte arrived
    assert scanner.take() == (request_bytes, next_request)


@pytest.mark.parametrize("cut", [1, 20, len(POST) - 1])
def test_a_partial_request_is_not_ready(cut):
    scanner = RequestScanner(MAX_HEAD, MAX_BODY, POST[:cut])
    assert not scanner.ready and not scanner.too_large


def test_the_head_is_parsed_once_it_is_whole():
    scanner = RequestScanner(MAX_HEAD, MAX_BODY, GET)
    assert (scanner.method, scanner.path, scanner.version) == (b"GET", b"/health/live", b"HTTP/1.1")
    assert scanner.body_received() == 0


def test_body_bytes_count_what_is_held_in_memory():
    scanner = RequestScanner(MAX_HEAD, MAX_BODY, POST[:-5])
    assert scanner.body_bytes == 11 and scanner.body_received() == 6  # declared, then arrived
    chunked = RequestScanner(MAX_HEAD, MAX_BODY, CHUNKED[:-10])
    assert chunked.body_bytes == chunked.body_received() == len(CHUNKED) - 10 - CHUNKED.index(b"\r\n\r\n") - 4


def test_expect_100_continue_is_seen_on_http_1_1_only():
    head = b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n"
    assert RequestScanner(MAX_HEAD, MAX_BODY, head).expects_continue
    assert not RequestScanner(MAX_HEAD, MAX_BODY, head.replace(b"1.1", b"1.0")).expects_continue


@pytest.mark.parametrize("headers", [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: -5\r\n",
    b"Content-Length: 5x\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    b"Content-Length: 1001\r\n",  # over max_body: the app answers 413 from the header
], ids=["two-lengths", "negative", "not-a-number", "not-chunked", "te-and-cl", "too-long"])
def test_framing_we_cannot_trust_is_handed_over_at_the_end_of_the_head(headers):
    head = b"POST / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    scanner = RequestScanner(MAX_HEAD, MAX_BODY, head + b"hello")
    assert scanner.ready and scanner.truncated
    assert scanner.take()[0] == head
    assert scanner.body_bytes == 0  # nothing of its body is kept


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: x\r\n",  # bare LF: Gunicorn refuses it at once
    b"GET / HTTP/1.1\r\nHost: x\n\r\n",  # bare LF ending a header
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not a chunk size
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 9000,  # chunk-size line without end
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-Trailer: 1\n",  # bare LF in a trailer
])
@pytest.mark.parametrize("size", [1, 7, 10_000])
def test_malformed_bytes_are_handed_over_at_once(data, size):
    scanner, ready_at = scan_in_pieces(data, size)
    assert scanner.ready and scanner.truncated and not scanner.body_too_large
    assert ready_at is not None and ready_at <= len(data)  # not one byte more is waited for
    assert data.startswith(scanner.take()[0])  # handed over as it came, up to where the defect was seen


@pytest.mark.parametrize("size", [1, 64, 10_000])
def test_a_chunked_body_over_the_limit_is_too_large_at_the_size_line_that_crosses_it(size):
    head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = (b"64\r\n" + b"a" * 100 + b"\r\n") * (MAX_BODY // 100)  # exactly the limit: still fine
    scanner, _ = scan_in_pieces(head + chunks + b"1\r\n", size)
    assert scanner.body_too_large and not scanner.ready  # the 1001st byte is announced, not waited for
    exact, _ = scan_in_pieces(head + chunks + b"0\r\n\r\n", size)
    assert exact.ready and not exact.truncated and not exact.body_too_large


def test_a_chunk_size_line_over_the_limit_is_too_large_as_soon_as_it_ends():
    scanner = RequestScanner(MAX_HEAD, MAX_BODY, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4000000")
    assert not scanner.body_too_large  # the line may go on
    scanner.feed(b"\r\n")
    assert scanner.body_too_large and not scanner.ready and scanner.body_received() == 9


def test_a_head_over_the_limit_is_too_large():
    scanner = RequestScanner(MAX_HEAD, MAX_BODY, b"GET / HTTP/1.1\r\n")
    for _ in range(MAX_HEAD // 15 + 1):
        scanner.feed(b"X-Pad: 123456\r\n")
    assert scanner.too_large and not scanner.ready
    whole = RequestScanner(MAX_HEAD, MAX_BODY, b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD + b"\r\n\r\n")
    assert whole.too_large and not whole.ready
