"""Fetching untrusted URLs: SSRF blocking, bounded cost and a per-item code for every failure.

Every server here listens on loopback. A guard wraps the fetcher's socket so a
connection to any non-loopback address fails the test instead of being made,
and a canary on a loopback port that is *not* allowlisted proves that blocked
URLs are refused before any connection.
"""

from __future__ import annotations

import gzip
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time

import pytest
from PIL import Image

from clip_service.config import ConfigError, Settings
from clip_service.images import http as http_module
from clip_service.images.errors import ItemError
from clip_service.images.fetcher import ImageFetcher
from clip_service.images.url_policy import Allowlist, UrlPolicy, embedded_ipv4, is_public_address

from . import fault_server as fault
from .helpers import image_bytes
from .support.image_server import ImageServer

pytestmark = pytest.mark.timeout(60)

PNG = image_bytes(Image.new("RGB", (32, 24), (200, 30, 30)), "PNG")


@pytest.fixture(autouse=True)
def connections(monkeypatch):
    """Every address the fetcher connects to; anything but loopback fails the test unconnected."""
    made: list[str] = []
    real_connect = http_module.DeadlineSocket.connect

    def guarded(sock, address):
        made.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"the fetcher tried to connect to {address[0]}")
        return real_connect(sock, address)

    monkeypatch.setattr(http_module.DeadlineSocket, "connect", guarded)
    return made


@pytest.fixture(scope="module")
def _system_tls_context():
    return http_module.tls_context()


@pytest.fixture(autouse=True)
def _one_system_tls_context(monkeypatch, _system_tls_context):
    """Fetchers here share one context made from the system CA store, as loading it takes ~0.1 s each time."""
    make = http_module.tls_context
    monkeypatch.setattr(http_module, "tls_context",
                        lambda ca_certs=None: _system_tls_context if ca_certs is None else make(ca_certs))


@pytest.fixture
def canary():
    with fault.CanaryServer() as server:
        yield server


@pytest.fixture
def server():
    with ImageServer() as s:
        s.add("/red.png", PNG, "image/png")
        yield s


def make_fetcher(server: ImageServer, canary=None, **overrides) -> ImageFetcher:
    """A fetcher that may reach exactly ``server``; the canary's port is an allowed port, not allowlisted."""
    options = dict(connect_timeout=1.0, read_timeout=2.0, total_timeout=5.0, request_timeout=10.0,
                   allow=f"{server.host}:{server.port}",
                   ports=[80, 443] + ([canary.port] if canary else []))
    options.update(overrides)
    return ImageFetcher(**options)


def fetch_one(f: ImageFetcher, url: str):
    (result,) = f.fetch_images([url])
    return result


def code_of(result) -> str:
    return result.code if isinstance(result, ItemError) else "ok"


# --- destinations that are blocked --------------------------------------------------------------

BLOCKED_FORMS = [
    "http://127.0.0.1:{port}/", "http://127.0.0.2:{port}/", "http://localhost:{port}/",
    "http://LocalHost.:{port}/", "http://images.localhost:{port}/", "http://127.0.0.1.:{port}/",
    "http://2130706433:{port}/", "http://0x7f000001:{port}/", "http://0x7f.0.0.1:{port}/",
    "http://0177.0.0.1:{port}/", "http://017700000001:{port}/", "http://127.1:{port}/",
    "http://127.0.1:{port}/", "http://0:{port}/", "http://0.0.0.0:{port}/",
    "http://[::1]:{port}/", "http://[::]:{port}/", "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/", "http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",
    "http://[::127.0.0.1]:{port}/", "http://[64:ff9b::127.0.0.1]:{port}/",
    "http://[2002:7f00:1::1]:{port}/", "https://127.0.0.1:{port}/",
    # Full-width digits and letters, which IDNA folds to 127.0.0.1 and localhost.
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/",
    "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54:{port}/",
]


@pytest.mark.parametrize("form", BLOCKED_FORMS)
def test_loopback_in_every_spelling_is_blocked_before_connecting(form, server, canary, connections):
    f = make_fetcher(server, canary)
    result = fetch_one(f, form.format(port=canary.port))
    assert code_of(result) == "blocked_url"
    assert "127.0.0.1" not in result.message and "::1" not in result.message
    assert canary.connections == 0 and connections == []


def test_the_canary_does_count_connections(server, canary, connections):
    """Control: with the canary allowlisted the same fetcher connects, so a zero above means something."""
    f = make_fetcher(server, canary, allow=f"127.0.0.1:{canary.port}", read_timeout=0.5)
    assert code_of(fetch_one(f, f"http://127.0.0.1:{canary.port}/")) in ("fetch_failed", "fetch_timeout")
    assert canary.connections >= 1 and connections == ["127.0.0.1"]


def test_the_allowlist_is_exact_host_and_port(server, canary):
    f = make_fetcher(server, canary)
    assert isinstance(fetch_one(f, server.url("/red.png")), Image.Image)
    # The same host on another loopback port, and another spelling of the allowed host, stay blocked.
    assert code_of(fetch_one(f, f"http://127.0.0.1:{canary.port}/red.png")) == "blocked_url"
    assert code_of(fetch_one(f, f"http://127.1:{server.port}/red.png")) == "blocked_url"
    assert code_of(fetch_one(f, f"http://localhost:{server.port}/red.png")) == "blocked_url"
    assert canary.connections == 0


def test_a_cidr_allowlist_entry_exempts_any_port(server):
    f = make_fetcher(server, allow="127.0.0.0/8")
    assert isinstance(fetch_one(f, f"http://127.0.0.1:{server.port}/red.png"), Image.Image)
    assert isinstance(fetch_one(f, f"http://127.1:{server.port}/red.png"), Image.Image)
    assert code_of(fetch_one(f, f"http://[::1]:{server.port}/red.png")) == "blocked_url"


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{canary}/", "http://2130706433:{canary}/", "http://[::ffff:127.0.0.1]:{canary}/",
    "http://localhost:{canary}/",
])
def test_redirects_to_blocked_addresses_are_refused(target, server, canary):
    server.routes["/hop"] = fault.redirect(target.format(canary=canary.port))
    result = fetch_one(make_fetcher(server, canary), server.url("/hop"))
    assert code_of(result) == "blocked_url" and "redirect" in result.message
    assert canary.connections == 0
    assert server.requests == ["/hop"]


@pytest.mark.parametrize("answers", [
    ["127.0.0.1"], ["10.1.2.3"], ["172.16.5.4"], ["192.168.0.7"], ["169.254.169.254"], ["100.64.0.1"],
    ["0.0.0.0"], ["198.18.0.1"], ["240.0.0.1"], ["224.0.0.1"], ["fd00::1"], ["fe80::1"], ["::1"],
    ["::ffff:10.0.0.1"], ["64:ff9b::a00:1"], ["2001:0:4136:e378:8000:63bf:80ff:fffe"],
    ["93.184.216.34", "10.0.0.5"],  # one private answer among public ones blocks the name
])
def test_names_that_resolve_to_private_addresses_are_blocked(answers, server, canary, connections):
    lookups = []

    def resolver(host, port):
        lookups.append(host)
        return answers

    f = make_fetcher(server, canary, resolver=resolver)
    result = fetch_one(f, "http://images.example.com/cat.jpg")
    assert code_of(result) == "blocked_url"
    assert lookups == ["images.example.com"] and connections == []
    assert not any(a in result.message for a in answers)


def test_dns_rebinding_connects_only_to_the_checked_address(server, canary, connections, monkeypatch):
    """The name is resolved once per hop; a second lookup that would answer loopback is never made."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    lookups = []

    def resolver(host, port):
        lookups.append(host)
        return next(answers)

    refused = []

    def no_public_traffic(sock, address):  # stands in for the public host: nothing is sent
        refused.append(address)
        raise ConnectionRefusedError("test: public addresses are never contacted")

    monkeypatch.setattr(http_module.DeadlineSocket, "connect", no_public_traffic)
    f = make_fetcher(server, canary, resolver=resolver)
    result = fetch_one(f, f"http://rebind.example.com:{canary.port}/")
    assert code_of(result) == "fetch_failed"
    assert lookups == ["rebind.example.com"]
    assert refused == [("93.184.216.34", canary.port)]
    assert canary.connections == 0


def test_rebinding_the_other_way_is_blocked_at_the_first_answer(server, canary, connections):
    answers = iter([["127.0.0.1"], ["93.184.216.34"]])
    f = make_fetcher(server, canary, resolver=lambda host, port: next(answers))
    assert code_of(fetch_one(f, f"http://rebind.example.com:{canary.port}/")) == "blocked_url"
    assert connections == [] and canary.connections == 0


def test_an_allowlisted_name_may_resolve_to_loopback(server):
    f = make_fetcher(server, allow=f"images.internal:{server.port}",
                     resolver=lambda host, port: ["127.0.0.1"] if host == "images.internal" else [])
    assert isinstance(fetch_one(f, f"http://images.internal:{server.port}/red.png"), Image.Image)
    assert server.headers[-1]["Host"] == f"images.internal:{server.port}"


# --- URL form -----------------------------------------------------------------------------------

@pytest.mark.parametrize("url, code", [
    ("ftp://example.com/a.jpg", "invalid_url"),
    ("file:///etc/passwd", "invalid_url"),
    ("gopher://example.com/", "invalid_url"),
    ("data:text/html;base64,AAAA", "invalid_url"),  # data:image/...;base64 is decoded locally (image_sources)
    ("javascript:alert(1)", "invalid_url"),
    ("//example.com/a.jpg", "invalid_url"),
    ("http:///a.jpg", "invalid_url"),
    ("http://user@example.com/a.jpg", "invalid_url"),
    ("http://user:pw@example.com/a.jpg", "invalid_url"),
    ("http://example.com@127.0.0.1/a.jpg", "invalid_url"),
    ("http://example.com\\@127.0.0.1/a.jpg", "invalid_url"),
    ("http://exa mple.com/a.jpg", "invalid_url"),
    ("http://example.com/a\r\nX: y", "invalid_url"),
    ("http://example.com:99999/a.jpg", "invalid_url"),
    ("http://example.com:0/a.jpg", "invalid_url"),
    ("http://example.com:http/a.jpg", "invalid_url"),
    ("http://[::1/a.jpg", "invalid_url"),
    ("http://%31%32%37.0.0.1/a.jpg", "invalid_url"),
    ("http://[fe80::1%25eth0]/a.jpg", "invalid_url"),
    ("http://example.com/" + "a" * 3000, "invalid_url"),
    ("http://example.com:22/a.jpg", "blocked_url"),
    ("http://example.com:6379/a.jpg", "blocked_url"),
    ("http://metadata.google.internal/computeMetadata/v1/", "blocked_url"),
    ("http://169.254.169.254/computeMetadata/v1/", "blocked_url"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "blocked_url"),
])
def test_urls_refused_by_form_never_reach_the_resolver(url, code, server, connections):
    lookups = []
    f = make_fetcher(server, resolver=lambda host, port: lookups.append(host) or ["93.184.216.34"])
    assert code_of(fetch_one(f, url)) == code
    assert lookups == [] and connections == []


def test_every_failure_is_a_per_item_result_and_good_images_survive(server, canary):
    server.routes["/gone.png"] = fault.serve(b"SECRET-UPSTREAM-BODY", "text/plain", status=500)
    urls = [server.url("/red.png"), "http://127.0.0.1:%d/" % canary.port, server.url("/gone.png"),
            "ftp://x/y", server.url("/red.png")]
    results = make_fetcher(server, canary).fetch_images(urls)
    assert [code_of(r) for r in results] == ["ok", "blocked_url", "upstream_status", "invalid_url", "ok"]
    assert server.requests.count("/red.png") == 1  # duplicates are fetched once
    assert "SECRET" not in results[2].message and "500" in results[2].message


# --- bounded cost -------------------------------------------------------------------------------

def test_a_trickling_body_is_cut_off_at_the_total_deadline(server):
    # Every read arrives in time; the whole body would take len(PNG) * 0.05 s (several seconds).
    server.routes["/slow.png"] = fault.trickle_body(PNG, interval=0.05)
    f = make_fetcher(server, read_timeout=1.0, total_timeout=0.75)
    started = time.monotonic()
    result = fetch_one(f, server.url("/slow.png"))
    elapsed = time.monotonic() - started
    assert code_of(result) == "fetch_timeout"
    assert 0.65 <= elapsed < 2.25


def test_trickling_headers_are_cut_off_at_the_total_deadline(server):
    server.routes["/slow.png"] = fault.trickle_headers(interval=0.05)
    f = make_fetcher(server, read_timeout=1.0, total_timeout=0.75)
    started = time.monotonic()
    assert code_of(fetch_one(f, server.url("/slow.png"))) == "fetch_timeout"
    assert time.monotonic() - started < 2.25


def test_a_silent_server_hits_the_read_timeout(server):
    server.routes["/hang.png"] = fault.hang(5)
    f = make_fetcher(server, read_timeout=0.5, total_timeout=10)
    started = time.monotonic()
    assert code_of(fetch_one(f, server.url("/hang.png"))) == "fetch_timeout"
    assert time.monotonic() - started < 2.0


def test_the_request_deadline_bounds_every_item(server):
    for i in range(3):
        server.routes[f"/slow{i}.png"] = fault.trickle_body(PNG, interval=0.1)
    f = make_fetcher(server, read_timeout=1.0, total_timeout=30, request_timeout=1.0)
    started = time.monotonic()
    results = f.fetch_images([server.url("/red.png")] + [server.url(f"/slow{i}.png") for i in range(3)])
    elapsed = time.monotonic() - started
    assert [code_of(r) for r in results] == ["ok", "fetch_timeout", "fetch_timeout", "fetch_timeout"]
    assert elapsed < 2.5


def test_a_connection_reset_is_a_fetch_failure(server):
    server.routes["/reset.png"] = fault.reset()
    assert code_of(fetch_one(make_fetcher(server), server.url("/reset.png"))) == "fetch_failed"


def test_a_body_shorter_than_its_content_length_is_a_fetch_failure(server):
    server.routes["/short.png"] = fault.lying_length(PNG[:50], declared=len(PNG))
    assert code_of(fetch_one(make_fetcher(server), server.url("/short.png"))) == "fetch_failed"


def test_a_body_longer_than_its_content_length_is_cut_at_the_declared_length(server):
    server.routes["/long.png"] = fault.lying_length(PNG, declared=60)
    assert code_of(fetch_one(make_fetcher(server), server.url("/long.png"))) == "decode_failed"


def test_a_declared_length_over_the_limit_is_refused_without_reading(server):
    server.routes["/huge.png"] = fault.lying_length(b"\x89PNG", declared=10 ** 12, then_hang=5)
    f = make_fetcher(server, max_bytes=100_000)
    started = time.monotonic()
    assert code_of(fetch_one(f, server.url("/huge.png"))) == "too_large"
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("chunked", [True, False])
def test_an_endless_body_stops_at_the_size_limit(chunked, server):
    stop, sent = threading.Event(), []
    server.routes["/endless.png"] = fault.endless(chunked=chunked, stop=stop, sent=sent)
    try:
        result = fetch_one(make_fetcher(server, max_bytes=300_000), server.url("/endless.png"))
    finally:
        stop.set()
    assert code_of(result) == "too_large"


def test_a_gzip_bomb_is_counted_after_decoding(server):
    handler, wire_size = fault.gzip_bomb(50 * 1024 * 1024)
    server.routes["/bomb.png"] = handler
    f = make_fetcher(server, max_bytes=1024 * 1024)
    assert wire_size < 1024 * 1024  # only the decoded size is over the limit
    result = fetch_one(f, server.url("/bomb.png"))
    assert code_of(result) == "too_large"


def test_a_gzip_encoded_image_is_decoded(server):
    server.routes["/gz.png"] = fault.serve(gzip.compress(PNG), "image/png", Content_Encoding="gzip")
    img = fetch_one(make_fetcher(server), server.url("/gz.png"))
    assert isinstance(img, Image.Image) and img.size == (32, 24)


def test_a_redirect_loop_stops_after_the_limit(server):
    server.routes["/loop"] = fault.redirect("/loop")
    result = fetch_one(make_fetcher(server, max_redirects=3), server.url("/loop"))
    assert code_of(result) == "too_many_redirects"
    assert server.requests == ["/loop"] * 4


def test_redirects_up_to_the_limit_are_followed(server):
    server.routes["/r1"] = fault.redirect("/r2", 301)
    server.routes["/r2"] = fault.redirect(server.url("/r3"), 307)
    server.routes["/r3"] = fault.redirect("red.png", 308)
    img = fetch_one(make_fetcher(server, max_redirects=3), server.url("/r1"))
    assert isinstance(img, Image.Image)
    assert code_of(fetch_one(make_fetcher(server, max_redirects=2), server.url("/r1"))) == "too_many_redirects"


@pytest.mark.parametrize("location, code", [
    ("ftp://example.com/a.png", "invalid_url"),
    ("data:image/png;base64,AAAA", "invalid_url"),
    ("http://user@example.com/a.png", "invalid_url"),
    ("http://example.com:25/a.png", "blocked_url"),
])
def test_redirect_targets_pass_the_same_checks(location, code, server, connections):
    server.routes["/hop"] = fault.redirect(location)
    assert code_of(fetch_one(make_fetcher(server), server.url("/hop"))) == code
    assert connections == ["127.0.0.1"]


@pytest.mark.parametrize("body, content_type, code", [
    (PNG, "text/html", "ok"),  # the bytes decide, not the Content-Type
    (b"<html><body>SECRET</body></html>", "image/jpeg", "not_an_image"),
    (b"II*\x00" + b"\x00" * 64, "image/tiff", "unsupported_format"),
    (PNG[: len(PNG) // 2], "image/png", "decode_failed"),
    (fault.png_header_bomb(40_000, 40_000), "image/png", "too_large"),
], ids=["png-as-html", "html-as-jpeg", "tiff", "truncated-png", "pixel-bomb"])
def test_content_is_judged_by_its_bytes(body, content_type, code, server):
    server.routes["/x"] = fault.serve(body, content_type)
    result = fetch_one(make_fetcher(server, max_image_pixels=10_000_000), server.url("/x"))
    assert code_of(result) == code
    if code != "ok":
        assert "SECRET" not in result.message


def test_pillows_decompression_bomb_warning_is_an_error(server):
    # 100 M pixels is under our (raised) limit but over Pillow's warning threshold.
    server.routes["/bomb.png"] = fault.serve(fault.png_header_bomb(10_000, 10_000), "image/png")
    result = fetch_one(make_fetcher(server, max_image_pixels=10 ** 12), server.url("/bomb.png"))
    assert code_of(result) == "too_large"


# --- fairness -----------------------------------------------------------------------------------

def _slow_routes(server, count, peak, delay=0.3):
    in_flight, lock = [0], threading.Lock()

    def slow(h):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(delay)
        with lock:
            in_flight[0] -= 1
        fault.serve(PNG, "image/png")(h)

    for i in range(count):
        server.routes[f"/slow{i}.png"] = slow
    return [server.url(f"/slow{i}.png") for i in range(count)]


def test_downloads_per_request_are_bounded(server):
    peak = [0]
    urls = _slow_routes(server, 6, peak)
    results = make_fetcher(server, concurrency=2, worker_concurrency=10).fetch_images(urls)
    assert all(isinstance(r, Image.Image) for r in results)
    assert peak[0] == 2


def test_downloads_per_worker_are_bounded_across_requests(server):
    peak = [0]
    urls = _slow_routes(server, 8, peak)
    f = make_fetcher(server, concurrency=4, worker_concurrency=3)
    outcomes = []
    threads = [threading.Thread(target=lambda part=part: outcomes.append(f.fetch_images(part)))
               for part in (urls[:4], urls[4:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(outcomes) == 2 and all(isinstance(r, Image.Image) for out in outcomes for r in out)
    assert peak[0] == 3


# --- TLS: connect to the checked address, verify the certificate for the name ------------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=30)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_server(tls_files):
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with ImageServer(ssl_context=context) as s:
        s.add("/red.png", PNG, "image/png")
        yield s


def test_https_sends_sni_and_verifies_the_certificate_for_the_name(tls_server, tls_files, connections):
    resolver = lambda host, port: ["127.0.0.1"]  # noqa: E731 - both names point at the test server
    f = ImageFetcher(allow=f"images.test:{tls_server.port},other.test:{tls_server.port}",
                     resolver=resolver, ca_certs=str(tls_files[0]), read_timeout=2, total_timeout=5)
    img = fetch_one(f, tls_server.url("/red.png", host="images.test"))
    assert isinstance(img, Image.Image)
    assert tls_server.headers[-1]["Host"] == f"images.test:{tls_server.port}"
    assert connections == ["127.0.0.1"]
    # The same server under a name its certificate does not carry is refused.
    result = fetch_one(f, tls_server.url("/red.png", host="other.test"))
    assert code_of(result) == "fetch_failed" and "certificate" in result.message
    assert tls_server.requests == ["/red.png"]


# --- the policy itself --------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "100.127.255.254", "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.251", "239.255.255.250",
    "240.0.0.1", "198.18.0.1", "198.19.255.255", "192.0.2.1", "198.51.100.1", "203.0.113.1", "192.0.0.8",
    "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1", "fec0::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "::10.0.0.1",
    "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b:1:a9fe:a9:fe00::", "2002:7f00:1::",
    "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "2001::1",
])
def test_non_global_addresses_are_not_public(address):
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700::1111",
                                     "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_global_addresses_are_public(address):
    assert is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("v6, v4", [
    ("::ffff:192.0.2.45", "192.0.2.45"),
    ("::192.0.2.45", "192.0.2.45"),
    ("2002:c000:22d::1", "192.0.2.45"),
    ("64:ff9b::c000:22d", "192.0.2.45"),
    ("64:ff9b:1:c000:2:2d00::", "192.0.2.45"),  # RFC 6052 /48: the u-octet splits the address
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # RFC 4380's Teredo example
    ("2606:4700::1111", None),
    ("::1", None),
])
def test_embedded_ipv4_addresses_are_extracted(v6, v4):
    found = embedded_ipv4(ipaddress.ip_address(v6))
    assert (str(found) if found else None) == v4


def test_allowlist_parsing():
    allow = Allowlist.parse(" 127.0.0.1:8080, [::1]:9000 ,Images.Internal.:443, 10.0.0.0/8,fd00::/8,")
    assert allow.host_ports == {("127.0.0.1", 8080), ("::1", 9000), ("images.internal", 443)}
    assert [str(n) for n in allow.networks] == ["10.0.0.0/8", "fd00::/8"]
    assert allow.allows("127.0.0.1", 8080) and not allow.allows("127.0.0.1", 8081)
    assert allow.allows("x", 1, ipaddress.ip_address("10.9.8.7"))
    assert allow.allows("x", 1, ipaddress.ip_address("::ffff:10.9.8.7"))
    assert not allow.allows("x", 1, ipaddress.ip_address("11.0.0.1"))
    assert Allowlist.parse("") == Allowlist()


@pytest.mark.parametrize("env, name", [
    ({"CLIP_FETCH_ALLOW": "127.0.0.1"}, "CLIP_FETCH_ALLOW"),
    ({"CLIP_FETCH_ALLOW": "host:port"}, "CLIP_FETCH_ALLOW"),
    ({"CLIP_FETCH_ALLOW": "10.0.0.0/33"}, "CLIP_FETCH_ALLOW"),
    ({"CLIP_FETCH_PORTS": "http"}, "CLIP_FETCH_PORTS"),
    ({"CLIP_FETCH_PORTS": "70000"}, "CLIP_FETCH_PORTS"),
    ({"CLIP_FETCH_TOTAL_TIMEOUT": "0"}, "CLIP_FETCH_TOTAL_TIMEOUT"),
])
def test_bad_fetch_settings_are_refused_by_name(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env(env)


def test_fetch_settings_come_from_the_environment():
    s = Settings.from_env({"CLIP_FETCH_ALLOW": "127.0.0.1:9000,10.0.0.0/8", "CLIP_FETCH_PORTS": "80,8080",
                           "CLIP_FETCH_MAX_REDIRECTS": "0", "CLIP_FETCH_TOTAL_TIMEOUT": "2.5"})
    assert (s.fetch.allow, s.fetch.ports, s.fetch.max_redirects, s.fetch.total_timeout) == (
        "127.0.0.1:9000,10.0.0.0/8", "80,8080", 0, 2.5)
    defaults = Settings.from_env({})
    assert defaults.fetch.allow == "" and defaults.fetch.ports == "80,443"


def test_the_default_policy_blocks_loopback_and_odd_ports():
    policy = UrlPolicy()
    target = policy.check_url("http://127.0.0.1/a.png")
    with pytest.raises(ItemError) as blocked:
        policy.check_address(target, ipaddress.ip_address("127.0.0.1"))
    assert blocked.value.code == "blocked_url"
    with pytest.raises(ItemError) as port:
        policy.check_url("http://example.com:8080/a.png")
    assert port.value.code == "blocked_url"


# --- through the API ----------------------------------------------------------------------------

def test_the_api_reports_blocked_urls_per_item(client, image_server, canary):
    urls = [image_server.url("/chelsea_0.jpg"), f"http://127.0.0.1:{canary.port}/x.jpg",
            "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"]
    response = client.post("/embed/image", json={"urls": urls})
    assert response.status_code == 200
    body = response.get_json()
    assert [len(v) for v in body["embeddings"]] == [32, 0, 0]
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "blocked_url"), (2, "blocked_url")]
    assert all(e["url"] == urls[e["index"]] and e["message"] for e in body["errors"])
    assert canary.connections == 0
