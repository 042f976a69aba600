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


_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
_FRAC = re.compile(r"^(-?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_LEADING_NUMBER = re.compile(rf"^({_NUMBER})\s*[A-Za-z][A-Za-z\s.]*$")  # "3 bolts", "1,000 dollars"


def canonical(answer: str) -> str:
    """A key under which equal answers agree: "3", "3.0", "\\boxed{3}", "$3$" and "3 bolts" all give "3".

    Numbers (integers, decimals, thousands commas, a/b and \\frac{a}{b}) become exact fractions; any
    other answer is compared as written, without spaces, ``$``, ``\\left``/``\\right`` or case.
    """
    s = answer.strip()
    while True:
        inner = boxed(s) if s.startswith("\\boxed{") and s.endswith("}") else None
        stripped = re.sub(r"^\$+|\$+$", "", s).strip().rstrip(".").strip()
        if inner is None and stripped == s:
            break
        s = inner if inner is not None else stripped
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(left|right|!|,|;)", "", s).replace("\\%", "").rstrip("%").strip()
    if "=" in s:  # "x = 3": the value
        s = s.rsplit("=", 1)[1].strip()
    m = _LEADING_NUMBER.match(s)
    if m:
        s = m.group(1)
    number = _as_number(s)
    if number is not None:
        return number
    return re.sub(r"\s+", "", s).lower()


def _as_number(s: str) -> str | None:
    from fractions import Fraction

    m = _FRAC.match(s.replace(" ", ""))
    if m:
        num, den = _as_number(m.group(2)), _as_number(m.group(3))
        s = f"{m.group(1)}({num})/({den})" if num is not None and den is not None else s
    parts = re.fullmatch(rf"(-?)\(?({_NUMBER}|-?\d+/\d+)\)?(?:/\(?({_NUMBER})\)?)?", s.replace(" ", ""))
    if parts is None:
        return None
    try:
        value = Fraction(parts.group(2).replace(",", ""))
        if parts.group(3) is not None:
            value /= Fraction(parts.group(3).replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    value = -value if parts.group(1) else value
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
