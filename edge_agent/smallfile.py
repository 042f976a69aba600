"""Reading a small file of ours (a cache, the registry, the config) that someone may have replaced with anything.

A FIFO would block ``read_text`` forever, a symlink to ``/dev/zero`` would fill the memory, a directory raises,
and JSON or TOML nested thousands deep ends in a RecursionError. ``read_small`` opens without blocking, reads
only a regular file and at most ``limit`` bytes; ``load_json`` adds the parse. Each failure is an ``Unreadable``
whose message says what the file is instead, for a one-line warning or error.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

LIMIT = 1 << 20  # our JSON and TOML files are a few kB


class Unreadable(Exception):
    """The file is there but is not a small regular text file of the expected kind: the message says why."""


def read_small(path: Path, limit: int = LIMIT) -> str | None:
    """The UTF-8 text of the regular file ``path``; None if there is no file at all."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Unreadable(e.strerror or str(e)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise Unreadable(f"it is {kind}, not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise Unreadable(f"it is over {limit:,} bytes")
        return b"".join(chunks).decode("utf-8")
    except OSError as e:
        raise Unreadable(e.strerror or str(e)) from None
    except UnicodeDecodeError:
        raise Unreadable("it is not UTF-8 text") from None
    finally:
        os.close(fd)


def load_json(path: Path, limit: int = LIMIT) -> Any:
    """The JSON value in ``path``; None if there is no file."""
    text = read_small(path, limit)
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        raise Unreadable("its JSON nests too deeply") from None
    except ValueError:
        raise Unreadable("it is not JSON") from None


_warned: set[str] = set()


def warn_once(message: str, once: str | None = None) -> None:
    """One line on stderr (through logging, so ``serve`` logs it as it logs the rest), once per process for each
    ``once`` key (default: the message itself)."""
    key = message if once is None else once
    if key not in _warned:
        _warned.add(key)
        logging.getLogger("edge_agent").warning(message)
