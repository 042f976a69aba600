"""JSON for programs: every ``--json`` output and every HTTP body parses with a strict parser.

Python's ``json`` writes a float that is not finite as ``Infinity``, ``-Infinity`` or ``NaN``, which is not JSON:
JavaScript, Go and serde reject the whole document. A score can be such a float: a judge read's verdict has
no numeric suspicion (``triggers.reading.JudgeRead`` says +/-inf), and a sum of finite log-probs can overflow.
Such a number is "no score": ``null`` in every JSON we print or serve (docs/commands.md), as a trigger that
carries no score already is. The database keeps what was computed; only what leaves the process changes.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every float that is not finite (inf, -inf, nan) replaced by None, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes only strict JSON: non-finite numbers become null (``allow_nan=False`` checks)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
