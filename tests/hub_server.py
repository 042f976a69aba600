"""A loopback stand-in for the Hugging Face Hub's file endpoints, enough for ``hf_hub_download``.

It answers as huggingface_hub 2.x expects (read from its ``file_download.get_hf_file_metadata`` and
``http_get``): ``HEAD /{repo}/resolve/{revision}/{file}`` carries X-Repo-Commit and, for an LFS file,
a 302 to the CDN with X-Linked-Etag (the sha256) and X-Linked-Size; a plain git file answers 200 with
its git-sha1 as ETag. The "CDN" is the same server reached as ``localhost`` rather than 127.0.0.1, so
that, as on the real Hub, huggingface_hub takes the metadata from the redirect instead of following it.
Each file can misbehave on purpose (see ``HubFile``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    body: bytes
    lfs: bool = True  # LFS: the hub reports its sha256; a git file has only a git-sha1
    reported_sha256: str | None = None  # what the hub claims (default: the body's real sha256)
    short: int | None = None  # serve only this many bytes, with a matching Content-Length (a short body)
    cut: int | None = None  # send this many bytes of a full-length response, then drop the connection
    slow_s: float = 0.0  # pause between 1 KiB chunks
    commit: str = COMMIT  # what X-Repo-Commit says (a real hub sends a 40-hex commit hash)

    @property
    def sha256(self) -> str:
        return self.reported_sha256 or hashlib.sha256(self.body).hexdigest()


class FakeHub:
    def __init__(self, files: dict[str, HubFile]):
        """``files``: "owner/repo/path/in/repo.gguf" -> HubFile."""
        self.files = files
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self, prefix: str = "") -> list[str]:
        return [p for m, p, _ in self.requests if m == "GET" and p.startswith(prefix)]

    def file_requests(self) -> list[str]:
        """Requests for files (HEAD or GET), leaving out huggingface_hub's own side calls under /api/."""
        return [p for _, p, _ in self.requests if not p.startswith("/api/")]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        hub: FakeHub = self.server.owner
        hub.requests.append((self.command, self.path, dict(self.headers)))
        if self.path.startswith("/cdn/"):
            return self._cdn(hub, self.path[len("/cdn/"):], head)
        parts = self.path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound")
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        f = hub.files.get(f"{repo}/{filename}")
        if f is None:
            known = any(k.startswith(repo + "/") for k in hub.files)
            return self._error(404, "EntryNotFound" if known else "RepoNotFound")
        headers = {"X-Repo-Commit": f.commit}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.body)),
                            "ETag": '"0000000000000000000000000000000000000000"',
                            "Location": f"http://localhost:{hub.port}/cdn/{repo}/{filename}", "Content-Length": "0"})
            self._head(302, headers)
            return
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(f.body) + f.body).hexdigest()
        headers["ETag"] = f'"{git_sha1}"'
        self._body(f, headers, head)

    def _cdn(self, hub: FakeHub, key: str, head: bool) -> None:
        f = hub.files.get(key)
        if f is None:
            return self._error(404, None)
        self._body(f, {"ETag": f'"{f.sha256}"'}, head)

    def _body(self, f: HubFile, headers: dict, head: bool) -> None:
        body = f.body[: f.short] if f.short is not None else f.body
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng[len("bytes="):].split("-")[0])
        if start and f.cut is not None:  # a resume of a broken transfer breaks again, at once
            self.close_connection = True
            self.wfile.flush()
            return
        part = body[start:]
        code = 206 if start else 200
        headers = {**headers, "Content-Length": str(len(part)), "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        self._head(code, headers)
        if head:
            return
        payload = part[: f.cut] if f.cut is not None else part
        for i in range(0, len(payload), 1024):
            self.wfile.write(payload[i:i + 1024])
            self.wfile.flush()
            if f.slow_s:
                time.sleep(f.slow_s)
        if f.cut is not None:
            self.close_connection = True

    def _head(self, code: int, headers: dict) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _error(self, code: int, error_code: str | None) -> None:
        body = b'{"error": "not found"}'
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if error_code:
            headers["X-Error-Code"] = error_code
        self._head(code, headers)
        if self.command != "HEAD":
            self.wfile.write(body)
