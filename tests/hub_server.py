"""A small in-memory stand-in for the Hugging Face Hub, serving its HTTP API on 127.0.0.1.

It answers what `huggingface_hub`'s `create_repo`, `upload_folder`, `hf_hub_download`,
`snapshot_download` and transformers' `push_to_hub` / `from_pretrained("user/repo")` send for model
repositories, and what `datasets`' `DatasetDict.push_to_hub` and `load_dataset("user/repo", config)`
send for dataset repositories (`/api/datasets/...`, `/datasets/{repo}/resolve/...`, the `HfFileSystem`
tree and paths-info listings, ranged reads). Files are uploaded "regular" (base64 in the commit),
except ``*.parquet``, which go through the LFS batch API with the basic transfer (a PUT to this
server), as on the Hub, where `.gitattributes` tracks them. Not Xet: clients must run with
`HF_HUB_DISABLE_XET=1`. Point the client at it with `HF_ENDPOINT=server.url`, set before
`huggingface_hub` (and `datasets`) are imported.

    with HubServer() as server:
        subprocess.run(..., env={"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", ...})
        server.files("user/repo")  # {path: bytes} at the head of main
        server.files("user/data", repo_type="dataset")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


_API_REPO = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
    r"(?:/(?P<action>revision|tree|preupload|commit|paths-info)(?:/(?P<rest>.+))?)?$"
)
_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_LFS_BATCH = re.compile(r"^/(?:(?P<kind>datasets)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_UPLOAD = re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$")
_LFS_SUFFIXES = (".parquet",)  # uploaded through LFS, as the Hub's default .gitattributes does
_REPO_TYPES = {"models": "model", "datasets": "dataset", None: "model"}


class _Repo:
    """Commits of one repository, as full snapshots: `[(commit id, {path: bytes})]`, oldest first.
    `lfs` holds the paths stored through LFS (their tree entries carry an ``lfs`` field)."""

    def __init__(self, repo_id: str, repo_type: str = "model"):
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.commits: list[tuple[str, dict[str, bytes]]] = []
        self.lfs: set[str] = set()
        self.commit({}, "initial commit")

    def commit(self, files: dict[str, bytes], summary: str) -> str:
        parent = len(self.commits)
        oid = hashlib.sha1(f"{self.repo_type}\0{self.repo_id}\0{parent}\0{summary}".encode()).hexdigest()
        self.commits.append((oid, files))
        return oid

    def snapshot(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision == "main":
            return self.commits[-1]
        return next((commit for commit in self.commits if commit[0] == revision), None)


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _folders(paths: list[str]) -> set[str]:
    """Every folder holding one of `paths`, at any depth."""
    return {"/".join(path.split("/")[:depth]) for path in paths for depth in range(1, path.count("/") + 1)}


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

    def _query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    # --- routing -------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

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
                return self._api(method, _REPO_TYPES[match["kind"]], match["repo"], match["action"], match["rest"])
            if (match := _LFS_BATCH.match(path)) and method == "POST":
                return self._lfs_batch(_REPO_TYPES[match["kind"]], match["repo"], json.loads(self._body()))
            if (match := _LFS_UPLOAD.match(path)) and method == "PUT":
                return self._lfs_upload(match["oid"], self._body())
            if (match := _RESOLVE.match(path)) and method in ("GET", "HEAD"):
                kind = _REPO_TYPES[match["kind"]]
                return self._resolve(kind, match["repo"], match["revision"], match["path"], head=method == "HEAD")
        self._error(HTTPStatus.NOT_FOUND, "NotFound", f"{method} {path} is not served by this test Hub")

    def _create_repo(self, payload: dict) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        reply = {"url": f"{self.server.url}/{prefix}{repo_id}", "name": repo_id}
        if (repo_type, repo_id) in self.server.repos:  # the Hub's conflict reply carries the URL too (create_repo reads it)
            return self._json({**reply, "error": f"You already created this {repo_type} repo: {repo_id}"}, HTTPStatus.CONFLICT)
        self.server.repos[repo_type, repo_id] = _Repo(repo_id, repo_type)
        self._json(reply)

    def _api(self, method: str, repo_type: str, repo_id: str, action: str | None, rest: str | None) -> None:
        repo = self.server.repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found", method == "HEAD")
        if method == "POST" and action == "preupload":
            files = json.loads(self._body())["files"]
            modes = [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(_LFS_SUFFIXES) else "regular",
                 "shouldIgnore": False}
                for f in files
            ]
            return self._json({"files": modes})
        if method == "POST" and action == "commit":
            return self._commit(repo, unquote(rest or ""), self._body())
        revision, _, subpath = (rest or "main").partition("/")
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            return self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}")
        oid, files = snapshot
        if action in (None, "revision"):
            key = "modelId" if repo_type == "model" else "id"
            return self._json({
                "id": repo_id, key: repo_id, "sha": oid, "private": False, "disabled": False, "gated": False,
                "tags": [], "siblings": [{"rfilename": name, "size": len(data)} for name, data in sorted(files.items())],
            })
        if action == "tree":
            return self._tree(repo, files, subpath.strip("/"), self._query().get("recursive", ["false"])[0].lower() == "true")
        if method == "POST" and action == "paths-info":
            wanted = parse_qs(self._body().decode()).get("paths", [])
            folders = _folders(list(files))
            entries = [self._entry(repo, files, path.strip("/"), folders) for path in wanted]
            return self._json([entry for entry in entries if entry is not None])
        self._error(HTTPStatus.NOT_FOUND, "NotFound", f"{method} {action} is not served by this test Hub")

    def _entry(self, repo: _Repo, files: dict[str, bytes], path: str, folders: set[str]) -> dict | None:
        """The tree entry of a file or folder, as the Hub's tree and paths-info give it; None if absent."""
        if path in files:
            data = files[path]
            entry = {"type": "file", "path": path, "size": len(data), "oid": _git_blob_oid(data)}
            if path in repo.lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            return entry
        if path in folders:
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        return None

    def _tree(self, repo: _Repo, files: dict[str, bytes], folder: str, recursive: bool) -> None:
        folders = _folders(list(files))
        if folder and folder not in folders:
            return self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{folder} does not exist")
        prefix = f"{folder}/" if folder else ""
        below = sorted(p for p in set(files) | folders if p.startswith(prefix))
        if not recursive:
            below = [p for p in below if "/" not in p[len(prefix):]]
        self._json([self._entry(repo, files, path, folders) for path in below])

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict) -> None:
        if (repo_type, repo_id) not in self.server.repos:
            return self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found")
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.server.lfs_objects:  # no "actions": the client skips the upload
                entry["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{item['oid']}"}}
            objects.append(entry)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._reply(HTTPStatus.OK, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, oid: str, content: bytes) -> None:
        if hashlib.sha256(content).hexdigest() != oid:
            return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", f"content does not hash to {oid}")
        self.server.lfs_objects[oid] = content
        self._reply(HTTPStatus.OK)

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> None:
        if revision != "main":
            return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", "this test Hub commits to main only")
        head, files = repo.snapshot("main")
        files, lfs = dict(files), set(repo.lfs)
        summary = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                if value.get("parentCommit") not in (None, head):
                    return self._error(HTTPStatus.PRECONDITION_FAILED, "PreconditionFailed", "main moved since parentCommit")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", f"unsupported encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
                lfs.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.server.lfs_objects:
                    return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.server.lfs_objects[value["oid"]]
                lfs.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {name: data for name, data in files.items() if not name.startswith(value["path"].rstrip("/") + "/")}
            else:
                return self._error(HTTPStatus.BAD_REQUEST, "BadRequest", f"unsupported commit operation {key!r}")
        oid = repo.commit(files, summary)
        repo.lfs = lfs & set(files)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json({"commitUrl": f"{self.server.url}/{prefix}{repo.repo_id}/commit/{oid}", "commitOid": oid,
                    "pullRequestUrl": None})

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self.server.repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(HTTPStatus.NOT_FOUND, "RepoNotFound", f"Repository {repo_id} not found", head)
        snapshot = repo.snapshot(revision)
        if snapshot is None:
            return self._error(HTTPStatus.NOT_FOUND, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        oid, files = snapshot
        if path not in files:
            return self._error(HTTPStatus.NOT_FOUND, "EntryNotFound", f"{path} does not exist on {revision}", head)
        data = files[path]
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs else _git_blob_oid(data)
        headers = {"X-Repo-Commit": oid, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream",
                   "Accept-Ranges": "bytes"}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged is None:
            return self._reply(HTTPStatus.OK, data, headers, head)
        start = int(ranged[1])
        end = min(int(ranged[2]) if ranged[2] else len(data) - 1, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._reply(HTTPStatus.PARTIAL_CONTENT, data[start : end + 1], headers, head)


class HubServer:
    """The test Hub on an ephemeral port of 127.0.0.1, serving from a daemon thread while in `with`."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        url: str
        repos: dict[tuple[str, str], _Repo]
        lfs_objects: dict[str, bytes]
        requests: list[tuple[str, str]]
        lock: threading.Lock

    def __init__(self):
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server.repos = {}
        self._server.lfs_objects = {}
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

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` (a commit id or "main")."""
        return dict(self._server.repos[repo_type, repo_id].snapshot(revision)[1])

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """The commit ids of `repo_id`, oldest first (the first is the repository's creation)."""
        return [oid for oid, _ in self._server.repos[repo_type, repo_id].commits]

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
