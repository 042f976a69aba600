"""Find a final answer in a step: ``\\boxed{…}`` (balanced braces) or ``The answer is …``."""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{…}``, or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        i = start + len("\\boxed{")
        depth = 1
        j = i
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j].strip()
            j += 1
        start = text.rfind("\\boxed{", 0, start)  # unclosed: try an earlier one
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a step states, or None if it states none."""
    found = boxed(text)
    if found is not None:
        return found or None
    m = None
    for m in _ANSWER_IS.finditer(text):
        pass
    if m is None:
        return None
    ans = m.group(1).strip().splitlines()[0].strip()
    ans = re.sub(r"^\$+|\$+$", "", ans).strip()
    ans = re.sub(r"[.\s]+$", "", ans)  # trailing full stop
    return ans or None
