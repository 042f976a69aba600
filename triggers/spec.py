"""Policy specs: ``NAME(key=value,...)`` parsed, and each value converted to its declared type."""

from __future__ import annotations

import math
import re

from .errors import PolicyError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a policy's name
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # a parameter's name
MAX_WORD = 1024  # a word parameter (a model path) longer than this is refused
SHOWN = 60  # characters of a bad value echoed back in an error


def brief(text: object) -> str:
    """``text`` for an error message: its repr, cut to a short prefix (a 100 kB --policy is not echoed back)."""
    shown = repr(text)
    if len(shown) <= SHOWN + 2:
        return shown
    text = text if isinstance(text, str) else shown
    return f"{text[:SHOWN]!r}… ({len(text):,} characters)"


def split_specs(text: str) -> list[str]:
    """Split ``a,b(x=1,y=2),c`` at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``trim-thr(tau=0.6)`` -> ("trim-thr", {"tau": "0.6"}). A parameter given twice is refused."""
    spec = spec.strip()
    name, _, rest = spec.partition("(")
    name = name.strip()
    if not NAME.fullmatch(name):
        raise PolicyError(f"{brief(name)} is not a policy name: see 'edge-agent policies' for the names")
    params: dict[str, str] = {}
    if rest:
        if not rest.endswith(")"):
            raise PolicyError(f"policy {brief(spec)}: write parameters as NAME(key=value,...)")
        for item in filter(None, (x.strip() for x in rest[:-1].split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise PolicyError(f"policy {name}: parameter {brief(item)} must be key=value")
            if not KEY.fullmatch(key):
                raise PolicyError(f"policy {name}: {brief(key)} is not a parameter name: "
                                  f"see 'edge-agent policies' for {name}'s parameters")
            if key in params:
                raise PolicyError(f"policy {name}: parameter {key} is given twice: give it once")
            params[key] = value.strip()
    return name, params


INT = re.compile(r"[+-]?\d{1,18}")


def convert(policy: str, key: str, value: object, kinds: str) -> object:
    """Convert one parameter to its declared type (``int``, ``float``, ``bool``, ``str``); refuse anything else."""
    words = set(re.findall(r"[a-z]+", kinds))
    text = value.strip() if isinstance(value, str) else value

    def fail(what: str) -> PolicyError:
        return PolicyError(f"policy {policy}: parameter {key} takes {what} (got {brief(value)})")

    if text is None or (isinstance(text, str) and text.lower() == "none"):
        if "None" in kinds:
            return None
        raise fail("a value")
    if "bool" in words:
        if isinstance(text, bool):
            return text
        if isinstance(text, str) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise fail("true or false")
    if "int" in words:
        if isinstance(text, int) and not isinstance(text, bool):
            return text
        if isinstance(text, str) and INT.fullmatch(text):
            return int(text)
        raise fail("a whole number")
    if "float" in words:
        if isinstance(text, bool):
            raise fail("a number")
        try:
            number = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise fail("a number") from None
        if not math.isfinite(number):
            raise fail("a finite number")
        return number
    if not isinstance(text, str):
        raise fail("a word")
    if len(text) > MAX_WORD:
        raise fail(f"a word of at most {MAX_WORD} characters")
    return text


def shown_as(value: object, typed: object) -> object:
    """How a label shows a value: as written ("3" stays 3, "3.0" stays 3.0), else the typed value."""
    if isinstance(value, str) and isinstance(typed, float) and INT.fullmatch(value.strip()):
        return int(value)
    return typed
