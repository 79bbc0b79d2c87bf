"""A small in-memory stand-in for the Hugging Face Hub, serving its HTTP API on 127.0.0.1.

It answers what `huggingface_hub`'s `create_repo`, `upload_folder`, `hf_hub_download`,
`snapshot_download` and transformers' `push_to_hub` / `from_pretrained("user/repo")` send for model
repositories: every file is uploaded "regular" (base64 in the commit), never LFS or Xet. Point the
client at it with `HF_ENDPOINT=server.url`, set before `huggingface_hub` is imported.

    with HubServer() as server:
        subprocess.run(..., env={"HF_ENDPOINT": server.url, ...})
        server.files("user/repo")  # {path: bytes} at the head of main
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


_API_REPO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<action>revision|tree|preupload|commit)/(?P<rest>.+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")


class _Repo:
    """Commits of one repository, as full snapshots: `[(commit id, {path: bytes})]`, oldest first."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.commits: list[tuple[str, dict[str, bytes]]] = []
        self.commit({}, "initial commit")

    def commit(self, files: dict[str, bytes], summary: str) -> str:
        parent = len(self.commits)
        oid = hashlib.sha1(f"{self.repo_id}\0{parent}\0{summary}".encode()).hexdigest()
        self.commits.append((oid, files))
        return oid

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision == "main":
            return self.commits[-1]
        return next((commit for commit in self.commits if commit[0] == revision), None)


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: HubServer._Server

    def log_message(self, format: str, *args) -> None:  # the test output stays readable
        pass

    # --- replies -------------------------------------------------------------------------------
    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, payload: object, status: int = HTTPStatus.OK) -> None:
        self._reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message}
        self._reply(status, body, headers, head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    # --- routing -------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        self.server.requests.append((method, self.path))
        path = unquote(urlsplit(self.path).path)
        with self.server.lock:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo(json.loads(self._body()))
            if method == "POST" and path == "/api/validate-yaml":
                self._body()
                return self._json({"errors": [], "warnings": []})
            if match := _API_REPO.match(path):
                return self._api(method, match["repo"], match["action"], match["rest"])
            if (match := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
                return self._resolve(match["repo"], match["revision"], match["path"], head=method == "HEAD")
        self._error(HTTPStatus.NOT_FOUND, "NotFound", f"{method} {path} is not served by this test Hub")

    def _create_repo(self, payload: dict) -> None:
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        reply = {"url": f"{self.server.url}/{repo_id}", "name": repo_id}
        if repo_id in self.server.repos:  # the Hub's conflict reply carries the URL too (create_repo reads it)
            return self._json({**reply, "error": f"You already created this model repo: {repo_id}"}, HTTPStatus.CONFLICT)
        self.server.repos[repo_id] = _Repo(repo_id)
        self._json(reply)

    def _api(self, method: str, repo_id: str, action: str | None, rest: str | None) -> None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found", method == "HEAD")
        if method == "POST" and action == "preupload":
            files = json.loads(self._body())["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._json({"files": modes})
        if method == "POST" and action == "commit":
            return self._commit(repo, rest, self._body())
        revision, _, subpath = (rest or "main").partition("/")
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            return self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        oid, files = snapshot
        if action in (None, "revision"):
            return self._json({
                "id": repo_id, "modelId": repo_id, "sha": oid, "private": False, "disabled": False, "gated": False,
                "tags": [], "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())],
            })
        if action == "tree":
            prefix = f"{subpath.rstrip('/')}/" if subpath else ""
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": _git_blob_oid(data)}
                for name, data in sorted(files.items()) if name.startswith(prefix)
            ]
            return self._json(entries)
        self._error(HTTPStatus.NOT_FOUND, "NotFound", f"{method} {action} is not served by this test Hub")

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> None:
        if revision != "main":
            return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", "this test Hub commits to main only")
        files = dict(repo.snapshot("main")[1])
        summary = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", f"unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {name: data for name, data in files.items() if not name.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", f"unsupported commit operation {key!r}")
        oid = repo.commit(files, summary)
        self._json({"commitUrl": f"{self.server.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found", head)
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            return self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        oid, files = snapshot
        if path not in files:
            return self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist on {revision}", head)
        data = files[path]
        headers = {"X-Repo-Commit": oid, "ETag": f'"{_git_blob_oid(data)}"', "Content-Type": "application/octet-stream"}
        self._reply(HTTPStatus.OK, data, headers, head)


class HubServer:
    """The test Hub on an ephemeral port of 127.0.0.1, serving from a daemon thread while in `with`."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        url: str
        repos: dict[str, _Repo]
        requests: list[tuple[str, str]]
        lock: threading.Lock

    def __init__(self):
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server.repos = {}
        self._server.requests = []
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received, as (method, path), for assertions on what a client did."""
        return self._server.requests

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` (a commit id or "main")."""
        return dict(self._server.repos[repo_id].snapshot(revision)[1])

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
