"""``edge-agent models pull REPO/FILE.gguf``: a GGUF from the Hugging Face Hub, verified, under a ``--model`` name.

huggingface_hub does the transfer (its progress bar; HF_ENDPOINT for a mirror, HF_TOKEN for gated repos)
into a staging dir beside the pulled models. The file is then hashed against the sha256 the hub reports
for it (the LFS oid, sent as X-Linked-Etag on the file's HEAD) or the one given with ``--sha256``,
checked to be GGUF, and only then renamed into place and registered. So a failed, short, corrupt or
interrupted download never leaves a file that ``--model`` resolves. It is not resumed: huggingface_hub
2.x writes each download to a per-process temp file that it deletes on failure, so a re-run starts over.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import InputError, ModelError
from .presets import (
    GGUF_MAGIC,
    PRESETS,
    file_sha256,
    mark_verified,
    pulled_dir,
    read_registry,
    write_registry,
)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
COMMIT_RE = re.compile(r"[0-9a-fA-F]{40}")  # a git commit hash: what a hub's X-Repo-Commit must be
REPO_PART_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SPACE_MARGIN = 64 << 20  # bytes kept free beyond the file itself


@dataclass(frozen=True)
class PullRequest:
    repo: str  # owner/name
    filename: str  # path inside the repo, ending in .gguf
    name: str  # what --model will accept
    revision: str | None
    sha256: str | None  # given by the user


@dataclass(frozen=True)
class Remote:
    """What one HEAD of the file tells: the commit it resolved to, its size and (LFS files) its sha256."""

    commit: str
    size: int | None
    sha256: str | None


def parse_request(spec: str, name: str | None, sha256: str | None, revision: str | None) -> PullRequest:
    """Check the command line before any network: REPO/FILE.gguf, the name, the hash."""
    parts = spec.strip().strip("/").split("/")
    if len(parts) < 3 or not all(REPO_PART_RE.fullmatch(p) for p in parts[:2]) or "" in parts or ".." in parts:
        raise InputError(f"pull takes OWNER/REPO/FILE.gguf (got {spec[:80]!r}), "
                         "e.g. Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf")
    filename = "/".join(parts[2:])
    if not filename.lower().endswith(".gguf"):
        raise InputError(f"{filename!r} is not a .gguf file: pull a llama.cpp GGUF (OWNER/REPO/FILE.gguf)")
    name = name if name is not None else Path(filename).name[: -len(".gguf")].lower()
    check_name(name)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not SHA256_RE.fullmatch(sha256):
            raise InputError("--sha256 takes 64 hex digits (the file's sha256, as 'sha256sum' prints it)")
    return PullRequest(f"{parts[0]}/{parts[1]}", filename, name, revision, sha256)


def check_name(name: str) -> None:
    if name.lower() in {p.lower() for p in PRESETS}:
        raise InputError(f"the name {name!r} is a preset's: pass another --name")
    if not NAME_RE.fullmatch(name) or name.lower().endswith(".gguf"):
        raise InputError(f"bad model name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-' "
                         "(not ending in .gguf): pass --name")


def pull_model(request: PullRequest, endpoint: str | None = None) -> dict:
    """Download, verify and register ``request``; returns the registry record (with name and path)."""
    # edge-agent turns the Hub off for every other command (HF_HUB_OFFLINE, set in cli.main); pulling is
    # the one that must reach it. huggingface_hub reads the variable on import, which happens just below.
    os.environ["HF_HUB_OFFLINE"] = "0"
    import httpx2
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our one line says what failed; its retry warnings would only repeat it
    where = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    read_registry(for_update=True)  # a damaged registry is refused before the download, not after
    try:
        remote = fetch_remote(request, endpoint)
        sha, source = expected_sha256(request, remote)
        staging = staging_dir()
        try:
            check_space(remote.size, staging)
            staged = download(request, remote, staging, endpoint)
            return install(request, remote, staged, sha, source)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except (OSError, httpx2.HTTPError) as e:  # the hub's errors are OSErrors too: each becomes one line
        raise hub_error(e, request, where) from None


def fetch_remote(request: PullRequest, endpoint: str | None) -> Remote:
    """One HEAD of the file (as hf_hub_download makes): commit, size and, for an LFS file, its sha256."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(request.repo, request.filename, revision=request.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if not meta.commit_hash:
        raise ModelError(f"{url} did not name a commit (no X-Repo-Commit header): "
                         "HF_ENDPOINT must point to a Hugging Face Hub or a mirror of it")
    if not COMMIT_RE.fullmatch(meta.commit_hash):  # it is recorded as the revision and used in the download URL
        raise ModelError(f"{url} named the commit {meta.commit_hash[:60]!r}, not a 40-hex commit hash: nothing was "
                         "installed; HF_ENDPOINT must point to a Hugging Face Hub or a mirror of it")
    etag = (meta.etag or "").lower()
    return Remote(meta.commit_hash.lower(), meta.size, etag if SHA256_RE.fullmatch(etag) else None)


def expected_sha256(request: PullRequest, remote: Remote) -> tuple[str, str]:
    """The hash to verify against, and where it came from; refuses a file nothing can vouch for."""
    spec = f"{request.repo}/{request.filename}"
    if request.sha256 and remote.sha256 and request.sha256 != remote.sha256:
        raise ModelError(f"--sha256 {request.sha256[:12]}… differs from the hub's sha256 {remote.sha256[:12]}… "
                         f"for {spec}@{remote.commit[:12]}: check the hash (nothing was downloaded)")
    if request.sha256:
        return request.sha256, "hub and --sha256" if remote.sha256 else "--sha256"
    if remote.sha256:
        return remote.sha256, "hub"
    raise ModelError(f"the hub reports no sha256 for {spec} (not an LFS file), so it cannot be verified: "
                     "pass --sha256 HEX if you know it")


def staging_dir() -> Path:
    """This process's own staging dir; ones left by killed pulls are removed (they held nothing usable)."""
    root = pulled_dir() / ".staging"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not pid_alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    mine = root / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def check_space(size: int | None, where: Path) -> None:
    if size is None:
        return
    free = shutil.disk_usage(where).free
    if free < size + SPACE_MARGIN:
        raise ModelError(f"not enough disk space: the file is {size / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free "
                         f"in {where.parent.parent}: free some, or set EDGE_AGENT_CACHE to another disk")


def download(request: PullRequest, remote: Remote, staging: Path, endpoint: str | None) -> Path:
    """The file, pinned to the commit the HEAD saw, into ``staging`` (huggingface_hub's progress bar on stderr)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(request.repo, request.filename, revision=remote.commit, local_dir=staging,
                                endpoint=endpoint))


def install(request: PullRequest, remote: Remote, staged: Path, sha: str, source: str) -> dict:
    """Verify the staged file, then rename it into place and register it (the order keeps a bad file out)."""
    spec = f"{request.repo}/{request.filename}"
    got = file_sha256(staged)
    if got != sha:
        raise ModelError(f"{spec} downloaded with sha256 {got[:12]}…, expected {sha[:12]}… ({source}): "
                         "deleted, nothing was installed; pull again, or check --sha256")
    with open(staged, "rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ModelError(f"{spec} is not a GGUF file: deleted; pull a llama.cpp .gguf model")
    dest = pulled_dir() / f"{request.name}.gguf"
    os.replace(staged, dest)
    mark_verified(dest, sha)
    record = {"repo": request.repo, "filename": request.filename, "revision": remote.commit, "sha256": sha,
              "size": dest.stat().st_size, "file": dest.name,
              "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    registry = read_registry(for_update=True)
    registry[request.name] = record
    write_registry(registry)
    return {"name": request.name, "path": str(dest), "size_bytes": record["size"], "sha256_source": source,
            **record}


def hub_error(e: Exception, request: PullRequest, where: str) -> ModelError:
    """One line for a failed pull, by the exception's class; says that nothing was installed."""
    import httpx2
    from huggingface_hub import errors

    spec = f"{request.repo}/{request.filename}"
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return ModelError(f"disk full while pulling {spec}: nothing was installed; free some space "
                          "(or set EDGE_AGENT_CACHE to another disk) and pull again")
    if isinstance(e, errors.GatedRepoError):
        return ModelError(f"{request.repo} is gated: accept its terms on the Hub, then set HF_TOKEN")
    if isinstance(e, errors.RepositoryNotFoundError):
        return ModelError(f"repository {request.repo} not found at {where} (private? set HF_TOKEN)")
    if isinstance(e, errors.RevisionNotFoundError):
        return ModelError(f"revision {request.revision!r} not found in {request.repo}: pass another --revision")
    if isinstance(e, errors.RemoteEntryNotFoundError):
        return ModelError(f"{request.filename} not found in {request.repo}: check the file name on the Hub")
    if isinstance(e, errors.HfHubHTTPError):
        status = e.response.status_code if e.response is not None else "?"
        fix = "check HF_TOKEN" if status in (401, 403) else "try again later"
        return ModelError(f"the hub at {where} answered HTTP {status} for {spec}: {fix}")
    if isinstance(e, (httpx2.ConnectError, httpx2.TimeoutException, errors.OfflineModeIsEnabled)):
        return ModelError(f"cannot reach {where} ({detail}): check the network, or HF_ENDPOINT")
    if isinstance(e, (httpx2.HTTPError, OSError)):
        return ModelError(f"download of {spec} failed ({detail}): nothing was installed; pull again")
    return ModelError(f"pulling {spec} failed ({type(e).__name__}: {detail}): nothing was installed")
