"""Text that request bodies may carry: one-line names, and free text without control characters.

Names (a partner's, an integration's, a client's) end up in headers, logs, dashboards,
CSV exports and PostgreSQL columns. A NUL cannot be stored in PostgreSQL text at all (a
500 instead of a 422), a line break or an escape sequence forges log lines and terminal
output, and the bidi override characters make a name display as something else
("Trojan Source"). Free text (findings, comments, reasons, descriptions) may span lines
(tab, line feed and carriage return are kept) but refuses the same other characters.
Any other unicode, emoji and combining marks included, is welcome.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator

# Bidi embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters, surrogates, and the line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def one_line(value: str) -> str:
    """`value` unless it holds a control, line-breaking or bidi-override character (ValueError)."""
    for char in value:
        if char in _BIDI_CONTROLS or unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise ValueError(f"must not contain control or line-breaking characters (found U+{ord(char):04X})")
    return value


OneLine = Annotated[str, AfterValidator(one_line)]
"""A `str` field holding a one-line name; combine with `Field(min_length=…, max_length=…)`."""


_LINE_BREAKS = frozenset("\t\n\r")


def free_text(value: str) -> str:
    """`value` unless it holds a control character other than tab and line breaks, or a bidi override."""
    for char in value:
        if char in _LINE_BREAKS:
            continue
        if char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(f"must not contain control characters other than tab and line breaks (found U+{ord(char):04X})")
    return value


FreeText = Annotated[str, AfterValidator(free_text)]
"""A `str` field holding free text (may span lines); combine with `Field(max_length=…)`."""
