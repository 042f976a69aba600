"""llama.cpp's compute mode on this machine: CPU weight repack on ("repack") or off ("plain").

Why this module exists: on some CPUs (AMX / AVX-512, Sapphire Rapids class) llama.cpp's CPU repack
buffer types crash the process on the first decode (ggml-org/llama.cpp#20824), whatever the model.
Loading with ``llama_model_params.use_extra_bufts = False`` avoids them. Where the repack works it is
faster, so it is not turned off everywhere: the mode is chosen once per (llama.cpp build, CPU) by a
probe in a child process -- the embedded model decodes a few tokens with repack on; if the child dies,
repack is off -- and the verdict is kept in ``runtime.json`` in the cache dir. ``EDGE_AGENT_REPACK``
(``on | off | auto``), else ``[local] repack`` in the config, forces it. If neither mode can decode,
the user gets one line (a ``ModelError``), never a segfault.

``apply`` makes every ``Llama`` built in this process use the mode: llama-cpp-python takes no argument
for it, so ``llama_model_default_params`` is wrapped. ``cloud_server`` calls it too, so the
``cloud-local`` server runs in the same mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelError
from .smallfile import Unreadable, load_json, warn_once

ENV = "EDGE_AGENT_REPACK"
SETTINGS = ("auto", "on", "off")
PROBE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class ComputeMode:
    """The mode in force and why."""

    repack: bool
    source: str  # env | config | probe | cached probe
    reason: str

    @property
    def name(self) -> str:
        return "repack" if self.repack else "plain"

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.name, "repack": self.repack, "source": self.source, "reason": self.reason}


_resolved: ComputeMode | None = None
_applied: bool | None = None


def setting(config_value: str | None = None) -> tuple[str, str]:
    """The forced setting and where it came from: ``(auto|on|off, env|config|default)``.

    ``config_value``: ``[local] repack`` as already read (else the config file is read here)."""
    env = os.environ.get(ENV)
    if env is not None and env.strip():
        value = env.strip().lower()
        if value not in SETTINGS:
            raise ConfigError(f"{ENV}={env[:40]!r} is not a compute setting: use auto, on or off")
        return value, "env"
    if config_value is None:
        from .config import load_config

        config_value = load_config().local.get("repack", "auto")
    value = config_value
    return value, ("config" if value != "auto" else "default")


def current() -> ComputeMode:
    """The compute mode for this process (resolved once; may run the probe)."""
    global _resolved
    if _resolved is None:
        _resolved = resolve()
    return _resolved


def resolve(config_value: str | None = None) -> ComputeMode:
    value, source = setting(config_value)
    if value == "on":
        return ComputeMode(True, source, f"forced on by {_where(source)}")
    if value == "off":
        return ComputeMode(False, source, f"forced off by {_where(source)}")
    return probed()


def _where(source: str) -> str:
    return f"{ENV}" if source == "env" else "[local] repack in the config"


# -- the probe ---------------------------------------------------------------------------------------
def machine_key() -> str:
    """What the verdict depends on: the llama.cpp build (version, library file) and the CPU (model, flags)."""
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in lib.glob("*.so*")) if lib.is_dir() else []
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                cpu += line.split(":", 1)[-1].strip() + "\n"
            if line.strip() == "" and cpu:
                break  # the first processor is enough
    except OSError:
        import platform

        cpu = platform.processor() + platform.machine()
    body = json.dumps({"llama_cpp": llama_cpp.__version__, "libs": libs, "cpu": cpu})
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def verdict_path() -> Path:
    from .presets import cache_dir

    return cache_dir() / "runtime.json"


def _read_verdicts() -> dict[str, dict]:
    """The kept verdicts; a damaged file (not JSON, a FIFO, a directory, a link to a device) is a miss."""
    path = verdict_path()
    try:
        data = load_json(path)
    except Unreadable as e:
        warn_once(f"warning: ignoring the compute-mode cache {path} ({e}): probing again; remove it to keep the "
                  "verdict")
        return {}
    return data if isinstance(data, dict) else {}


def _write_verdict(key: str, verdict: dict) -> None:
    path = verdict_path()
    data = _read_verdicts()
    data[key] = verdict
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # left only when the replace failed (runtime.json a directory)
    except OSError:
        pass  # a read-only cache only means probing again next time


def probe_argv(repack: bool) -> list[str]:
    """The child that tries one mode: it exits 0 only if the embedded model decodes."""
    return [sys.executable, "-m", "edge_agent.runtime", "--probe", "on" if repack else "off"]


def _try(repack: bool) -> tuple[bool, str]:
    try:
        proc = subprocess.run(probe_argv(repack), capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {PROBE_TIMEOUT_S:.0f} s"
    if proc.returncode == 0:
        return True, "decoded"
    if proc.returncode < 0:
        import signal

        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return False, f"crashed ({name})"
    last = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return False, f"failed ({last[0][:200]})"


def probed() -> ComputeMode:
    key = machine_key()
    known = _read_verdicts().get(key)
    if isinstance(known, dict) and isinstance(known.get("repack"), bool):
        return ComputeMode(known["repack"], "cached probe", str(known.get("reason", "")))
    ok, how = _try(True)
    if ok:
        verdict = {"repack": True, "reason": "the repack decoded in a probe on this CPU and llama.cpp build"}
    else:
        ok_plain, how_plain = _try(False)
        if not ok_plain:
            raise ModelError(
                f"llama.cpp cannot run on this CPU: a probe decode {how} with the weight repack and {how_plain} "
                "without it: reinstall llama-cpp-python built for this machine "
                "(pip install --force-reinstall --no-cache-dir llama-cpp-python), then run 'edge-agent doctor'")
        verdict = {"repack": False,
                   "reason": f"the repack {how} in a probe on this CPU; the plain mode decoded"}
    _write_verdict(key, verdict)
    return ComputeMode(verdict["repack"], "probe", verdict["reason"])


# -- applying the mode ---------------------------------------------------------------------------------
def apply(mode: ComputeMode | None = None) -> ComputeMode:
    """Make every ``Llama`` built in this process from now on use ``mode`` (default: ``current()``)."""
    global _applied
    mode = mode or current()
    _set_repack(mode.repack)
    return mode


def _set_repack(repack: bool) -> None:
    global _applied
    import llama_cpp.llama_cpp as lib

    base = getattr(lib.llama_model_default_params, "_edge_agent_base", lib.llama_model_default_params)

    def default_params():
        params = base()
        params.use_extra_bufts = repack
        return params

    default_params._edge_agent_base = base  # type: ignore[attr-defined]
    lib.llama_model_default_params = default_params
    _applied = repack


def _probe(repack: bool) -> int:
    """Run in the child: load the embedded model in one mode and decode a few tokens."""
    from llama_cpp import Llama

    from .presets import resolve_model

    _set_repack(repack)
    path = resolve_model("smollm2-135m")[1]
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=False, verbose=False)
    tokens = llm.tokenize(b"One, two, three,", add_bos=False)
    llm.eval(tokens)
    for _ in range(4):
        llm.eval([llm.sample(temp=0.0)])
    llm.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe" and sys.argv[2] in ("on", "off"):
        sys.exit(_probe(sys.argv[2] == "on"))
    print("usage: python -m edge_agent.runtime --probe on|off", file=sys.stderr)
    sys.exit(2)
