"""A local stand-in for the Hugging Face Hub that the real huggingface_hub client downloads from.

Only because the Hub is unreachable from the test machines (HF_ENDPOINT points here). The endpoints are the
ones huggingface_hub 2.x calls, read from its source (hf_api.py, file_download.py, _snapshot_download.py):

- ``GET /api/models/{repo}/revision/{rev}``: repo info; ``sha`` is the commit a branch or tag points to;
- ``GET /api/models/{repo}/tree/{rev}?recursive=...``: the file list (type, path, size, oid), one page;
- ``HEAD /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit``, ``ETag`` (the cache's blob name) and
  ``Content-Length``; the client refuses a file without the first two;
- ``GET`` of the same: the bytes, or from an offset with ``Range: bytes=N-`` (206), which is how the client
  resumes a connection that dropped mid-file.

Errors carry the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound), which the client
maps to its exception types. Every request is logged; files can be cut once mid-way (the connection drops)
or held mid-way until the test releases them (to kill a pull while a file is half done).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> file name -> content
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> commit


@dataclass
class Hold:
    """Stop sending ``file`` after ``at`` bytes until ``release`` is set; ``reached`` says we got there."""

    file: str
    at: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)



class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-file (the resume tests do it on purpose) is expected, not an error to print."""

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut_once: dict[str, int] = {}  # file -> byte count after which the connection drops, once
        self.hold: Hold | None = None
        self.gated: dict[str, str] = {}  # repo -> the token it wants (else 401 GatedRepo, as the Hub answers)
        self._server: ThreadingHTTPServer | None = None

    # -- content --------------------------------------------------------------------------------------
    def add(self, repo: str, files: dict[str, bytes], refs: tuple[str, ...] = ("main",)) -> str:
        """A commit of ``repo`` with these files, pointed to by ``refs``; returns the commit hash."""
        r = self.repos.setdefault(repo, _Repo())
        commit = hashlib.sha1(repr((repo, len(r.commits), sorted(files))).encode()).hexdigest()
        r.commits[commit] = dict(files)
        for ref in refs:
            r.refs[ref] = commit
        return commit

    def add_folder(self, repo: str, folder: Path, refs: tuple[str, ...] = ("main",), extra: dict[str, bytes] | None = None) -> str:  # fmt: skip
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(repo, {**files, **(extra or {})}, refs)

    def gets(self, file: str) -> list[str | None]:
        """The Range header of every GET of ``file`` (None: a whole-file GET)."""
        return [rng for method, path, rng in self.log if method == "GET" and path.endswith("/" + file)]

    # -- server ---------------------------------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self.hold:
            self.hold.release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _resolve(self, repo: str, rev: str) -> tuple[_Repo | None, str | None]:
        r = self.repos.get(repo)
        if r is None:
            return None, None
        commit = r.refs.get(rev, rev if rev in r.commits else None)
        return r, commit


_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)/revision/([^/]+)$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$")
_FILE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        body = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        path = unquote(urlparse(self.path).path)
        self.fake.log.append((self.command, path, self.headers.get("Range")))
        routes = ((_INFO.match(path), "info"), (_TREE.match(path), "tree"), (_FILE.match(path), "file"))
        m, kind = next(((m, k) for m, k in routes if m), (None, ""))
        if m is None:
            return self._error(404, "NotFound")
        repo, commit = self.fake._resolve(m.group(1), m.group(2))
        if repo is None:
            return self._error(404, "RepoNotFound")
        token = self.fake.gated.get(m.group(1))
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            return self._error(401, "GatedRepo")
        if commit is None:
            return self._error(404, "RevisionNotFound")
        files = repo.commits[commit]
        if kind == "info":
            return self._json(
                {"id": m.group(1), "sha": commit, "siblings": [{"rfilename": f} for f in files]}
            )
        if kind == "tree":
            entries = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in files.items()
            ]
            return self._json(entries)
        name = m.group(3)
        if name not in files:
            return self._error(404, "EntryNotFound", commit)
        self._send_file(name, files[name], commit)

    def _send_file(self, name: str, data: bytes, commit: str) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.match(r"bytes=(\d+)-", rng)):
            start = int(m.group(1))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        body = data[start:]
        cut = self.fake.cut_once.pop(name, None)
        hold = self.fake.hold
        if cut is not None:  # send part of it, then drop the connection
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if hold is not None and hold.file == name and not hold.release.is_set():
            self.wfile.write(body[: hold.at])
            self.wfile.flush()
            hold.reached.set()
            hold.release.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)


# What the tests that pull serve (fixtures ``checkpoint`` and ``fake_hub`` in conftest.py).
REPO = "acme/tiny-oss"
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
NOT_NEEDED = {
    "README.md": b"# tiny\n",
    "original/model.safetensors": b"x" * 1000,
    "metal/model.bin": b"y" * 1000,
}
