"""The ``browser`` built-in tool (search / open / find), shaped like the gpt-oss reference browser.

GPT-OSS was trained on this display: every page view gets a cursor, shown as ``[cursor] title (url)``,
numbered lines ``L0: ...``, and links as ``【n†text】`` so the model can open link ``n`` and cite
``【cursor†L3-L5】``. Pages are fetched with urllib (timeout, size limit); search goes through a configurable
backend and is off by default, with a clear message, because there is no search engine we can call offline.
"""

from __future__ import annotations

import json
import re
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Literal

from mlx_harmony_tui import __version__


class BrowserError(Exception):
    """A problem the model caused or should hear about (bad cursor, fetch failed); fed back as text."""


@dataclass
class BrowserToolConfig:
    """``[tools.browser]`` in the config file."""

    enabled: bool = False
    search_backend: Literal["none", "searxng"] = "none"  # a Literal, so the config reports a typo when read
    search_url: str = ""  # base URL of a SearXNG instance (JSON API enabled)
    timeout_s: float = 15.0
    max_bytes: int = 2_000_000
    view_lines: int = 60
    wrap_width: int = 100
    confirm: bool = False


@dataclass
class Page:
    url: str
    title: str
    lines: list[str]
    links: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> (url, line to open at)
    kind: str = "page"  # "page" (a fetched document) | "find" | "search" (views made by the tool)


_BLOCK = {
    "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "main",
    "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dd", "dt", "hr", "nav", "aside", "form",
}  # fmt: skip
_SKIP = {"script", "style", "noscript", "template", "svg", "head"}


class _HtmlToText(HTMLParser):
    """HTML -> text blocks with links inlined as 【n†text】 (n numbers the page's links)."""

    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.title = ""
        self.blocks: list[str] = []
        self.links: list[str] = []
        self._cur: list[str] = []
        self._skip = 0
        self._in_title = False
        self._link: tuple[str, list[str]] | None = None

    def _flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._cur)).strip()
        if text:
            self.blocks.append(text)
        self._cur = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skip += 1
        elif tag == "a":
            href = dict(attrs).get("href")
            if href and not href.startswith(("javascript:", "#", "mailto:")):
                self._link = (urllib.parse.urljoin(self.base_url, href), [])
        elif tag in _BLOCK:
            self._flush()
            if tag.startswith("h") and tag[1:].isdigit():
                self._cur.append("#" * int(tag[1:]) + " ")
            elif tag == "li":
                self._cur.append("* ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "a" and self._link is not None:
            url, parts = self._link
            self._link = None
            text = re.sub(r"\s+", " ", "".join(parts)).strip() or url
            self.links.append(url)
            self._cur.append(f"【{len(self.links) - 1}†{text}】")
        elif tag in _BLOCK:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif self._skip:
            return
        elif self._link is not None:
            self._link[1].append(data)
        else:
            self._cur.append(data)

    def close(self) -> None:
        super().close()
        self._flush()


def _wrap(blocks: list[str], width: int) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        lines.extend(textwrap.wrap(block, width, break_long_words=False, break_on_hyphens=False) or [""])
    return lines


def html_to_page(html: str, url: str, wrap_width: int = 100) -> Page:
    """Parse HTML into a Page: wrapped lines and the link table."""
    parser = _HtmlToText(url)
    parser.feed(html)
    parser.close()
    title = re.sub(r"\s+", " ", parser.title).strip() or url
    links = {i: (u, 0) for i, u in enumerate(parser.links)}
    return Page(url=url, title=title, lines=_wrap(parser.blocks, wrap_width), links=links)


class Browser:
    """State of one conversation's browsing: the page stack (index = cursor)."""

    def __init__(self, config: BrowserToolConfig | None = None) -> None:
        self.config = config or BrowserToolConfig()
        self.pages: list[Page] = []

    # helpers ------------------------------------------------------------------------------------------
    def _page(self, cursor: int) -> Page:
        if not self.pages:
            raise BrowserError("No page is open yet. Use browser.open with a URL first.")
        if cursor == -1:
            return self.pages[-1]
        if not 0 <= cursor < len(self.pages):
            raise BrowserError(f"Invalid cursor {cursor}; open cursors are 0..{len(self.pages) - 1}.")
        return self.pages[cursor]

    def _show(self, page: Page, loc: int = -1, num_lines: int = -1) -> str:
        self.pages.append(page)
        cursor = len(self.pages) - 1
        total = len(page.lines)
        start = max(0, loc) if loc >= 0 else 0
        if total and start >= total:
            raise BrowserError(f"Invalid location {loc}: the page has {total} lines (L0-L{total - 1}).")
        n = num_lines if num_lines > 0 else self.config.view_lines
        end = min(total, start + n)
        header = f"[{cursor}] {page.title} ({page.url})\n**viewing lines [{start} - {max(start, end - 1)}] of {max(0, total - 1)}**\n\n"
        body = "\n".join(f"L{i}: {page.lines[i]}" for i in range(start, end))
        return header + body

    def _fetch(self, url: str, view_source: bool = False) -> Page:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BrowserError(f"Only http(s) URLs can be opened, not {url!r}.")
        req = urllib.request.Request(url, headers={"User-Agent": f"mlx-harmony-tui/{__version__}"})
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:  # noqa: S310 (scheme checked)
                data = resp.read(self.config.max_bytes + 1)
                ctype = resp.headers.get_content_type()
                charset = resp.headers.get_content_charset() or "utf-8"
                final_url = resp.geturl()
        except urllib.error.HTTPError as e:
            raise BrowserError(f"Fetching {url} failed: HTTP {e.code} {e.reason}.") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BrowserError(f"Fetching {url} failed: {reason}.") from None
        truncated = len(data) > self.config.max_bytes
        text = data[: self.config.max_bytes].decode(charset, errors="replace")
        if ctype == "text/html" and not view_source:
            page = html_to_page(text, final_url, self.config.wrap_width)
        elif ctype.startswith("text/") or ctype in ("application/json", "application/xml") or view_source:
            lines = text.splitlines()
            page = Page(url=final_url, title=final_url, lines=[ln.rstrip() for ln in lines])
        else:
            raise BrowserError(f"{url} is {ctype}, which the browser cannot display.")
        if truncated:
            page.lines.append(f"[... page truncated at {self.config.max_bytes} bytes]")
        return page

    # the three tool functions -------------------------------------------------------------------------
    def open(
        self,
        id: int | str = -1,  # noqa: A002 (the model's argument name)
        cursor: int = -1,
        loc: int = -1,
        num_lines: int = -1,
        view_source: bool = False,
        source: str | None = None,
    ) -> str:
        if isinstance(id, str) and not id.lstrip("-").isdigit():
            return self._show(self._fetch(id, view_source), loc, num_lines)
        link = int(id)
        page = self._page(int(cursor))
        if link < 0:  # scroll the page at cursor
            return self._show(page, loc, num_lines)
        if link not in page.links:
            raise BrowserError(f"Link {link} does not exist on page [{cursor}] ({page.url}).")
        url, at = page.links[link]
        cached = next((p for p in reversed(self.pages) if p.kind == "page" and p.url == url), None)
        target = cached if cached is not None and not view_source else self._fetch(url, view_source)
        return self._show(target, loc if loc >= 0 else at, num_lines)

    def find(self, pattern: str, cursor: int = -1) -> str:
        page = self._page(int(cursor))
        needle = pattern.lower()
        if not needle:
            raise BrowserError("find needs a non-empty pattern.")
        lines: list[str] = []
        links: dict[int, tuple[str, int]] = {}
        for n, line in enumerate(page.lines):
            if needle in line.lower():
                i = len(links)
                links[i] = (page.url, n)
                lines.append(f"【{i}†match at L{n}】")
                lines.append(line)
        if not links:
            lines = [f"No matches for `{pattern}` in {page.title}."]
        title = f"Find results for text: `{pattern}` in `{page.title}`"
        return self._show(Page(url=page.url, title=title, lines=lines, links=links, kind="find"))

    def search(self, query: str, topn: int = 10, source: str | None = None) -> str:
        backend = self.config.search_backend
        if backend == "none":
            raise BrowserError(
                'Web search is turned off in this app (tools.browser.search_backend = "none"). '
                'Open a known URL instead with browser.open, e.g. {"id": "https://example.com"}.'
            )
        if backend != "searxng":
            raise BrowserError(f"Unknown search backend {backend!r}.")
        if not self.config.search_url:
            raise BrowserError("tools.browser.search_url is empty: set the SearXNG address in the config.")
        q = urllib.parse.urlencode({"q": query, "format": "json"})
        url = self.config.search_url.rstrip("/") + "/search?" + q
        raw = self._fetch(url, view_source=True)
        try:
            data: dict[str, Any] = json.loads("\n".join(raw.lines))
        except json.JSONDecodeError:
            raise BrowserError("The search backend did not return JSON (is format=json enabled?).") from None
        lines: list[str] = []
        links: dict[int, tuple[str, int]] = {}
        for i, r in enumerate(data.get("results", [])[: max(1, int(topn))]):
            link = str(r.get("url", ""))
            links[i] = (link, 0)
            domain = urllib.parse.urlsplit(link).netloc
            lines.append(f"* 【{i}†{r.get('title') or link}†{domain}】")
            lines.extend(_wrap([str(r.get("content") or "")], self.config.wrap_width))
        if not lines:
            lines = [f"No results for `{query}`."]
        return self._show(
            Page(url=url, title=f"Search results for `{query}`", lines=lines, links=links, kind="search")
        )
