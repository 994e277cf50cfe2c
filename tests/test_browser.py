"""The browser tool against a real local HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlx_harmony_tui.tools.browser import Browser, BrowserError, BrowserToolConfig, html_to_page

INDEX = """<html><head><title>Test  Index</title><style>body{color:red}</style></head>
<body><h1>Welcome</h1><p>First paragraph with a <a href="/second">second page</a> link.</p>
<script>var hidden = 1;</script><ul><li>alpha</li><li>beta <a href="https://example.org/x">external</a></li></ul>
<p>Needle in the haystack.</p></body></html>"""
SECOND = (
    "<html><head><title>Second</title></head><body>"
    + "".join(f"<p>row {i}</p>" for i in range(100))
    + "</body></html>"
)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/":
            self._send(200, "text/html; charset=utf-8", INDEX.encode())
        elif url.path == "/second":
            self._send(200, "text/html", SECOND.encode())
        elif url.path == "/plain":
            self._send(200, "text/plain", b"line one\nline two\n")
        elif url.path == "/big":
            self._send(200, "text/plain", b"y" * 5000)
        elif url.path == "/image":
            self._send(200, "image/png", b"\x89PNG")
        elif url.path == "/search":
            q = urllib.parse.parse_qs(url.query)["q"][0]
            body = {
                "results": [
                    {
                        "title": f"About {q}",
                        "url": f"http://{self.headers['Host']}/second",
                        "content": "snippet",
                    }
                ]
            }
            self._send(200, "application/json", json.dumps(body).encode())
        else:
            self._send(404, "text/plain", b"nope")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_html_to_text_lines_and_links() -> None:
    page = html_to_page(INDEX, "http://h/")
    assert page.title == "Test Index"
    assert page.lines[0] == "# Welcome"
    assert page.lines[1] == "First paragraph with a 【0†second page】 link."
    assert "* beta 【1†external】" in page.lines
    assert not any("hidden" in ln or "color" in ln for ln in page.lines)
    assert page.links == {0: ("http://h/second", 0), 1: ("https://example.org/x", 0)}


def test_open_url_shows_cursor_header_and_numbered_lines(server: str) -> None:
    b = Browser()
    out = b.open(id=f"{server}/")
    head, body = out.split("\n\n", 1)
    assert head.splitlines()[0] == f"[0] Test Index ({server}/)"
    assert "viewing lines [0 - 4] of 4" in head
    assert body.splitlines()[0] == "L0: # Welcome" and "L4: Needle in the haystack." in body


def test_open_link_by_id_then_scroll(server: str) -> None:
    b = Browser(BrowserToolConfig(view_lines=10))
    b.open(id=f"{server}/")
    out = b.open(id=0)  # link 0 of the most recent page
    assert out.startswith(f"[1] Second ({server}/second)") and "L0: row 0" in out and "L10:" not in out
    out = b.open(cursor=1, loc=50, num_lines=3)
    assert out.startswith("[2] Second") and out.splitlines()[-3:] == [
        "L50: row 50",
        "L51: row 51",
        "L52: row 52",
    ]


def test_find_and_open_find_result(server: str) -> None:
    b = Browser()
    b.open(id=f"{server}/second")
    out = b.find(pattern="ROW 42")
    assert out.startswith("[1] Find results for text: `ROW 42` in `Second`")
    assert "L0: 【0†match at L42】" in out and "L1: row 42" in out
    out = b.open(id=0, cursor=1, num_lines=2)
    assert out.startswith("[2] Second") and "L42: row 42" in out
    assert "No matches" in b.find(pattern="zebra", cursor=0)


def test_plain_text_truncation_and_errors(server: str) -> None:
    b = Browser(BrowserToolConfig(max_bytes=1000))
    assert "L1: line two" in b.open(id=f"{server}/plain")
    assert "[... page truncated at 1000 bytes]" in b.open(id=f"{server}/big")
    with pytest.raises(BrowserError, match="HTTP 404"):
        b.open(id=f"{server}/missing")
    with pytest.raises(BrowserError, match="image/png"):
        b.open(id=f"{server}/image")
    with pytest.raises(BrowserError, match="Only http"):
        b.open(id="file:///etc/passwd")
    with pytest.raises(BrowserError, match="Invalid cursor 99"):
        b.open(id=0, cursor=99)
    with pytest.raises(BrowserError, match="Link 7 does not exist"):
        b.open(id=7, cursor=0)


def test_unreachable_host_is_a_clear_error() -> None:
    b = Browser(BrowserToolConfig(timeout_s=2))
    with pytest.raises(BrowserError, match="Fetching http://127.0.0.1:9/ failed"):
        b.open(id="http://127.0.0.1:9/")


def test_search_off_by_default_and_searxng_backend(server: str) -> None:
    with pytest.raises(BrowserError, match="search is turned off"):
        Browser().search(query="x")
    b = Browser(BrowserToolConfig(search_backend="searxng", search_url=server))
    out = b.search(query="cats")
    assert out.startswith("[0] Search results for `cats`") and "L0: * 【0†About cats†127.0.0.1:" in out
    assert b.open(id=0).startswith(f"[1] Second ({server}/second)")
