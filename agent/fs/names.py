"""Showing file names to people: any byte string, unambiguously, the way ``ls`` does.

Linux names are bytes; Ferry holds them as ``os.fsdecode`` makes them (undecodable bytes become lone
surrogates, losslessly). ``shown`` quotes a name as GNU ls's ``shell-escape`` style does: plain when it
is harmless, in single quotes when it holds characters a shell would interpret, and with ``$'\\ooo'``
escapes for control characters and bytes that are not UTF-8, so the text can be pasted into a shell.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

_SAFE = frozenset(string.ascii_letters + string.digits + "%+,-./:=@_^")
_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r"}


def _escaped(ch: str) -> str | None:
    """The $'...' form of a character that cannot be shown as itself, or None."""
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape keeps it
        return f"\\{code - 0xDC00:03o}"
    if ch in _C_ESCAPES:
        return _C_ESCAPES[ch]
    if 0xD800 <= code <= 0xDFFF:  # a surrogate that is not a smuggled byte: show its code point
        return f"\\u{code:04x}"
    if not ch.isprintable():
        return "".join(f"\\{b:03o}" for b in ch.encode("utf-8"))
    return None


def shown(name: str) -> str:
    """``name`` (a path or one component) as ls would print it with ``--quoting-style=shell-escape``."""
    if not name:
        return "''"
    if all(ch in _SAFE for ch in name):
        return name
    out: list[str] = []
    plain: list[str] = []
    escapes: list[str] = []
    for ch in name:
        esc = _escaped(ch)
        if esc is None:
            if escapes:
                out.append("$'" + "".join(escapes) + "'")
                escapes = []
            plain.append(ch)
        else:
            if plain:
                out.append("'" + "".join(plain).replace("'", "'\\''") + "'")
                plain = []
            escapes.append(esc)
    if plain:
        out.append("'" + "".join(plain).replace("'", "'\\''") + "'")
    if escapes:
        out.append("$'" + "".join(escapes) + "'")
    return "".join(out)


def is_utf8(name: str) -> bool:
    """Whether a held name is valid UTF-8 (no undecodable bytes, no lone surrogates)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Problem:
    """An entry (or part of one, such as an attribute) that is not as it should be, and why, in words
    for an operator: left out of a snapshot, or not fully restored."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{shown(self.path)}: {self.reason}"
