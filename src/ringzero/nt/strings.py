"""How NT compares names without regard to case."""

from __future__ import annotations


def upcase(s: str) -> str:
    """RtlUpcaseUnicodeString: each character to its uppercase character, one
    for one; a character whose uppercase is more than one (ß, the ligature ﬁ)
    stays as it is, so "Straße" and "STRASSE" are two names, as on NT."""
    if s.isascii():
        return s.upper()
    return "".join(u if len(u := c.upper()) == 1 else c for c in s)
