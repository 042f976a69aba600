"""The learned step trigger (``trim-learned``): features, the saved model, training.

A small logistic regression over free per-step features, after TRIM-Agg's feature set and
TrigReason's "learning-based triggers". ``edge-agent tune --learn`` collects labelled steps and
calls ``fit``; the model is saved as versioned JSON (no pickle: a model file is data, not code)
in ``<config dir>/models/trim-learned-vN.json``, mode 0600. At run time ``LearnedModel.predict``
is a dot product in plain Python: no scikit-learn, no cloud.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PolicyError
from .types import Step

from .scorers import logprob_score

FORMAT = 1  # the JSON layout; bump when it changes
PREFIX = "trim-learned-v"
# per step: the current logprob score and the lowest one of the earlier local steps, the step's
# length (log1p of tokens) and index, its entropy / top-1 statistics, and the cloud help so far
# (cloud-written steps and their tokens: free to count, and what the budget has paid for)
FEATURES = ("score", "min_prev_score", "log_tokens", "index", "mean_entropy", "max_entropy", "first_entropy",
            "min_top1", "mean_top1", "cloud_steps", "cloud_tokens")


def features(steps: Sequence[Step], step: Step) -> list[float]:
    """The feature vector of ``step`` given the accepted steps before it (names in ``FEATURES``)."""
    sig = step.signals
    prev = [logprob_score(s.signals) for s in steps if s.author == "local" and s.kind == "step"]
    cloud = [s for s in steps if s.author == "cloud"]
    return [logprob_score(sig), min(prev, default=1.0), math.log1p(step.tokens), float(step.index),
            sig.mean_entropy, sig.max_entropy, sig.first_entropy, sig.min_top1, sig.mean_top1,
            float(len(cloud)), float(sum(s.tokens for s in cloud))]


_models_dir: list[Callable[[], Path]] = []  # set by the application: it knows where its config lives


def use_models_dir(where: Callable[[], Path]) -> None:
    """Tell this package where saved models live (``latest`` and ``vN`` are looked up there)."""
    _models_dir[:] = [where]


def models_dir() -> Path:
    if not _models_dir:
        raise PolicyError("no models directory is configured for trim-learned: pass model=PATH")
    return _models_dir[0]()


@dataclass(frozen=True)
class LearnedModel:
    """A fitted logistic regression: P(step correct) = sigmoid(coef . (x - mean) / scale + intercept)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    version: int = 0
    ref: str = ""  # what the policy label records: vN, or the file path
    training: dict[str, Any] | None = None

    def predict(self, x: Sequence[float]) -> float:
        z = self.intercept + sum(c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale))
        if z >= 0:
            return round(1.0 / (1.0 + math.exp(-z)), 6)
        e = math.exp(z)
        return round(e / (1.0 + e), 6)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": "logistic_regression", "version": self.version,
                "target": "P(step correct)", "features": list(self.features),
                "scaler": {"mean": list(self.mean), "scale": list(self.scale)},
                "coef": list(self.coef), "intercept": self.intercept, "training": self.training or {}}


def fit(rows: Sequence[Sequence[float]], labels: Sequence[int], *, c: float = 1.0,
        training: dict[str, Any] | None = None) -> LearnedModel:
    """Standardize, fit a logistic regression (label 1 = the step is correct). Imports scikit-learn."""
    if len(rows) != len(labels) or not rows:
        raise PolicyError("no labelled steps to learn from: use more problems (--limit)")
    if len(set(labels)) < 2:
        raise PolicyError(f"all {len(labels)} labelled steps are {'correct' if labels[0] else 'wrong'}: "
                         "a classifier needs both kinds; use more or harder problems (--limit)")
    import numpy as np
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(rows, dtype=float)
    y = np.asarray(labels, dtype=int)
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)  # a constant feature gets weight 0, not NaN
    clf = LogisticRegression(C=c, max_iter=1000).fit((x - scaler.mean_) / scale, y)
    info = {**(training or {}), "n_steps": int(len(y)), "n_correct": int(y.sum()), "C": c,
            "sklearn": sklearn.__version__}
    return LearnedModel(features=FEATURES, mean=tuple(float(v) for v in scaler.mean_),
                        scale=tuple(float(v) for v in scale), coef=tuple(float(v) for v in clf.coef_[0]),
                        intercept=float(clf.intercept_[0]), training=info)


def versions(directory: Path, prefix: str = PREFIX) -> dict[int, Path]:
    """The saved versions of a model kind in ``directory``: {N: path of PREFIX + N + .json}."""
    out = {}
    if directory.is_dir():
        for p in directory.glob(prefix + "*.json"):
            m = re.fullmatch(re.escape(prefix) + r"(\d+)\.json", p.name)
            if m:
                out[int(m.group(1))] = p
    return out


def model_path(ref: str, directory: Path, prefix: str, missing: str) -> Path:
    """``latest``, ``vN`` (in ``directory``) or a path; ``missing`` is the error when there is no version."""
    if ref == "latest":
        saved = versions(directory, prefix)
        if not saved:
            raise PolicyError(missing)
        return saved[max(saved)]
    if re.fullmatch(r"v\d+", ref):
        return directory / f"{prefix}{ref[1:]}.json"
    return Path(ref).expanduser()


def save_versioned(model: Any, directory: Path, prefix: str) -> tuple[Path, Any]:
    """Write ``model`` (a dataclass with version, ref, training and to_json) as the next version, mode 0600.

    Older versions are kept; a version file is never overwritten."""
    from dataclasses import replace
    from datetime import datetime, timezone

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    version = max(versions(directory, prefix), default=0) + 1
    training = {**(model.training or {}), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    model = replace(model, version=version, ref=f"v{version}", training=training)
    path = directory / f"{prefix}{version}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(model.to_json(), f, indent=1)
    os.chmod(path, 0o600)
    return path, model


def save_model(model: LearnedModel, directory: Path | None = None) -> tuple[Path, LearnedModel]:
    """Write the model as the next version (``trim-learned-vN.json``, mode 0600); older ones are kept."""
    return save_versioned(model, directory or models_dir(), PREFIX)


MAX_MODEL_BYTES = 1 << 20  # a model is a few hundred numbers


def load_model(ref: str = "latest", directory: Path | None = None) -> LearnedModel:
    """``latest``, ``vN`` (in the models dir) or a path to a model JSON file."""
    directory = directory or models_dir()
    hint = "train one with 'edge-agent tune --learn --dataset FILE'"
    path = model_path(ref, directory, PREFIX, f"no trim-learned model in {directory}: {hint}")
    if path.exists() and not path.is_file():  # a FIFO or a device: reading could block or never end
        raise PolicyError(f"trim-learned model {path} is not a regular file: pass a model JSON file")
    if path.is_file() and path.stat().st_size > MAX_MODEL_BYTES:
        raise PolicyError(f"trim-learned model {path} is over {MAX_MODEL_BYTES:,} bytes: not a model file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"no trim-learned model at {path}: {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PolicyError(f"cannot read trim-learned model {path} ({type(e).__name__}): {hint}") from None
    try:
        if data["format"] != FORMAT or tuple(data["features"]) != FEATURES:
            raise ValueError("format")
        n = len(FEATURES)
        mean, scale, coef = (tuple(float(v) for v in vals) for vals in
                             (data["scaler"]["mean"], data["scaler"]["scale"], data["coef"]))
        if not len(mean) == len(scale) == len(coef) == n or any(s <= 0 for s in scale):
            raise ValueError("shape")
        model = LearnedModel(features=FEATURES, mean=mean, scale=scale, coef=coef,
                             intercept=float(data["intercept"]), version=int(data.get("version") or 0),
                             training=data.get("training") or {})
    except (KeyError, TypeError, ValueError):
        raise PolicyError(f"trim-learned model {path} does not match this version's features: {hint}") from None
    version_ref = f"v{model.version}" if path.parent == directory and path.name == f"{PREFIX}{model.version}.json" else str(path)
    from dataclasses import replace

    return replace(model, ref=version_ref)
