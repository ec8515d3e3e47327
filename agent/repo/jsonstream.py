"""Reading one JSON document (RFC 8259) from a stream of bytes in bounded memory.

Why our own: a manifest comes from storage anyone with write access to the bucket can change, and it can
describe a volume of any size. ``json.loads`` holds the whole text and builds every value at once (a
33 KB zstd frame of whitespace expands to gigabytes; a small frame of ``-1,`` repeated to 10^8 list
items), and the streaming libraries (ijson) keep each token whole, so one long string still costs its
length. ``JsonStream`` keeps a window of text and hands the caller one value at a time: strings and
integers up to a stated length, integer arrays in batches (``array('q')``), base64 strings as decoded
pieces, and small values whole through the C parser (``value``), falling back to the caller's own
streaming when a value is larger than its window. The caller, which knows what it expects, checks each
value as it comes and keeps only what it needs.

Every refusal is ``JsonError`` with a short reason. Bytes must be UTF-8 (RFC 8259 section 8.1); strings
must not hold lone surrogates; nesting is bounded (``MAX_DEPTH``).
"""

from __future__ import annotations

import binascii
import codecs
import json
import re
from array import array
from collections.abc import Callable, Iterator
from typing import Any, Protocol

MAX_DEPTH = 32
"""Deepest nesting ``skip`` accepts (a manifest needs 4)."""
MAX_NUMBER_CHARS = 40
"""Longest number, in characters: 2**127 has 39 digits."""

scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
"""The standard library's C string scanner (escapes, control characters) for one JSON string."""

_WS = re.compile(r"[ \t\n\r]*")
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_INT_ITEM = r"[ \t\n\r]*-?(?:0|[1-9][0-9]{0,18})[ \t\n\r]*"
_INT_LIST = re.compile(rf"(?>{_INT_ITEM})(?:,(?>{_INT_ITEM}))*+")
"""Possessive: a backtracking repeat would keep a state per item (100 MB for a megabyte of text)."""
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class JsonError(Exception):
    """The text is not the JSON expected; ``str()`` says where and why, for an operator."""


class Stop(Protocol):
    def is_set(self) -> bool: ...


class Stopped(Exception):
    """``stop`` was set while reading."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise JsonError(f"key {dup!r} appears twice in one object")
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)
_PLAIN = json.JSONDecoder()
"""Without the duplicate check: ``values`` counts keys instead (see there), and only re-reads an item with
``_DECODER`` when the count leaves a doubt."""
_Scan = Callable[[str, int], tuple[Any, int]]
"""A decoder's C scanner: the value at an index, and where it ends (StopIteration if none starts there)."""
TOO_BIG = object()
"""What ``value`` returns for a value longer than its window."""


def check_text(value: str, what: str) -> str:
    """``value`` unless it holds a lone surrogate (which no UTF-8 text can)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonError(f"{what} holds a lone surrogate (\\ud800-\\udfff escape): not UTF-8 text") from None
    return value


class JsonStream:
    """A cursor over JSON text decoded from ``read()`` (which returns the next bytes, ``b""`` at the
    end). Holds at most about one ``piece`` plus the longest value asked for."""

    def __init__(self, read: Callable[[], bytes], stop: Stop | None = None) -> None:
        self._read = read
        self._stop = stop
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._first = True

    # --- the window ---------------------------------------------------------------------------------------
    def _more(self) -> bool:
        """Append the next piece of text, dropping what was consumed; False at the end. Indexes into the
        window are invalidated: callers keep them relative to ``_pos``."""
        if self._eof:
            return False
        if self._stop is not None and self._stop.is_set():
            raise Stopped
        data = self._read()
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise JsonError(f"the text is not UTF-8 ({e.reason})") from None
        if self._first and text:
            self._first = False
            if text.startswith("\ufeff"):
                raise JsonError("the text starts with a byte order mark")
        if not data:
            self._eof = True
        self._buf = self._buf[self._pos :] + text
        self._pos = 0
        return bool(data) or bool(text)

    def _ensure(self, n: int) -> None:
        """At least ``n`` characters after the cursor, or all that is left."""
        while len(self._buf) - self._pos < n and self._more():
            pass

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end), without taking it."""
        while True:
            self._pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._more():
                return ""

    def take(self) -> str:
        """The next character that is not whitespace ('' at the end)."""
        ch = self.peek()
        self._pos += len(ch)
        return ch

    def expect(self, ch: str, what: str) -> None:
        got = self.take()
        if got != ch:
            shown = repr(got) if got else "the end of the text"
            raise JsonError(f"expected {ch!r} {what}, found {shown}")

    def end(self) -> None:
        """Nothing but whitespace may follow the document."""
        if self.peek():
            raise JsonError("text follows the JSON document")

    # --- containers -----------------------------------------------------------------------------------------
    def items(self, what: str) -> Iterator[None]:
        """Iterate an array: after '[' each turn the cursor is at the next item, which the caller reads."""
        self.expect("[", f"to open {what}")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield
            ch = self.take()
            if ch == "]":
                return
            if ch != ",":
                raise JsonError(f"expected ',' or ']' in {what}, found {ch!r}" if ch else f"{what} is not closed")

    def keys(self, what: str, limit: int = 256) -> Iterator[str]:
        """Iterate an object's keys (each appearing once); after each the cursor is at its value."""
        self.expect("{", f"to open {what}")
        if self.peek() == "}":
            self._pos += 1
            return
        seen: set[str] = set()
        while True:
            key = self.string(limit, f"a key of {what}")
            if key in seen:
                raise JsonError(f"key {key!r} appears twice in {what}")
            seen.add(key)
            self.expect(":", f"after key {key!r} of {what}")
            yield key
            ch = self.take()
            if ch == "}":
                return
            if ch != ",":
                raise JsonError(f"expected ',' or '}}' in {what}, found {ch!r}" if ch else f"{what} is not closed")

    # --- scalars -----------------------------------------------------------------------------------------------
    def string(self, limit: int, what: str) -> str:
        """A string of at most ``limit`` characters of JSON text (escapes included)."""
        if self.peek() != '"':
            raise JsonError(f"{what} must be a string")
        start = 1  # relative to the cursor
        search = 1
        while True:
            buf = self._buf
            j = buf.find('"', self._pos + search)
            if j < 0:
                if len(buf) - self._pos - start > limit:
                    raise JsonError(f"{what} is longer than {limit} characters")
                search = len(buf) - self._pos
                if not self._more():
                    raise JsonError(f"{what} is not closed")
                continue
            k = j
            while k > self._pos + start and buf[k - 1] == "\\":
                k -= 1
            if (j - k) % 2:  # an escaped quote
                search = j + 1 - self._pos
                continue
            break
        if j - self._pos - start > limit:
            raise JsonError(f"{what} is longer than {limit} characters")
        try:
            value, end = scanstring(buf, self._pos + start, True)
        except json.JSONDecodeError as e:
            raise JsonError(f"{what}: {e.msg}") from None
        self._pos = end
        return check_text(value, what)

    def integer(self, what: str) -> int:
        """An integer (no fraction, no exponent) of at most ``MAX_NUMBER_CHARS`` characters."""
        self.peek()
        self._ensure(MAX_NUMBER_CHARS + 2)
        m = _INT.match(self._buf, self._pos)
        if m is None:
            raise JsonError(f"{what} must be an integer")
        after = self._buf[m.end() : m.end() + 1]
        if after and after in ".eE":
            raise JsonError(f"{what} must be an integer")
        if m.end() - self._pos > MAX_NUMBER_CHARS:
            raise JsonError(f"{what} has more than {MAX_NUMBER_CHARS} digits")
        self._pos = m.end()
        return int(m.group())

    def integers(self, what: str) -> Iterator[array[int]]:
        """The integers of an array (each within a signed 64-bit integer), in batches, through its ']'."""
        self.expect("[", f"to open {what}")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            self._ensure(1 << 16)
            buf = self._buf
            close = buf.find("]", self._pos)
            if close >= 0:
                cut, after = close, close + 1
            else:
                cut = buf.rfind(",", self._pos)
                if cut < 0:
                    if len(buf) - self._pos > 64 or not self._more():
                        raise JsonError(f"{what} holds something other than integers, or is not closed")
                    continue
                after = cut + 1
            segment = buf[self._pos : cut]
            if segment.startswith("-1,-1,"):  # format 1.0's hole slots, a million to a megabyte: no parsing
                count = segment.count(",") + 1
                if len(segment) == 3 * count - 1 and segment == "-1," * (count - 1) + "-1":
                    self._pos = after
                    yield array("q", [-1]) * count
                    if close >= 0:
                        return
                    continue
            if not _INT_LIST.fullmatch(segment):
                raise JsonError(f"{what} must hold only integers of at most 19 digits")
            try:
                values = array("q", map(int, segment.split(",")))
            except OverflowError:
                raise JsonError(f"{what} holds an integer outside the signed 64-bit range") from None
            self._pos = after
            yield values
            if close >= 0:
                return
            if self._stop is not None and self._stop.is_set():
                raise Stopped

    def base64(self, what: str) -> Iterator[bytes]:
        """The decoded bytes of a base64 string (RFC 4648, padded, no escapes), in pieces."""
        if self.take() != '"':
            raise JsonError(f"{what} must be a string")
        carry = ""
        while True:
            buf = self._buf
            close = buf.find('"', self._pos)
            segment = buf[self._pos : close if close >= 0 else len(buf)]
            if "\\" in segment:
                raise JsonError(f"{what}: base64 text holds an escape")
            text = carry + segment
            if close >= 0:
                self._pos = close + 1
                if len(text) % 4 or not _BASE64.fullmatch(text):
                    raise JsonError(f"{what} is not base64")
                try:
                    yield binascii.a2b_base64(text, strict_mode=True)
                except binascii.Error:
                    raise JsonError(f"{what} is not base64") from None
                return
            usable = len(text) // 4 * 4
            piece, carry = text[:usable], text[usable:]
            self._pos = len(buf)
            if piece:
                if "=" in piece or not _BASE64.fullmatch(piece):
                    raise JsonError(f"{what} is not base64")
                yield binascii.a2b_base64(piece, strict_mode=True)
            if not self._more():
                raise JsonError(f"{what} is not closed")

    def value(self, limit: int) -> Any:
        """The next value, parsed whole by the C parser if it is at most ``limit`` characters long;
        otherwise ``TOO_BIG`` with the cursor unmoved."""
        self.peek()
        self._ensure(limit)
        try:
            value, end = _DECODER.raw_decode(self._buf, self._pos)
        except json.JSONDecodeError as e:
            if self._eof:
                raise JsonError(e.msg) from None
            return TOO_BIG  # (or an error the caller's streaming will find and name)
        except RecursionError:
            raise JsonError("values are nested too deeply") from None
        except ValueError:  # an integer of more than 4300 digits
            raise JsonError("a number has thousands of digits") from None
        self._pos = end
        return value

    def values(self, what: str, limit: int) -> Iterator[Any]:
        """Iterate an array, each item parsed whole by the C parser when it is at most ``limit``
        characters long; for a longer one ``TOO_BIG`` comes instead, with the cursor at the item, which the
        caller then reads itself. The same as ``items`` and ``value``, in one tight loop: a manifest's
        million entries pass through here."""
        self.expect("[", f"to open {what}")
        if self.peek() == "]":
            self._pos += 1
            return
        scan: _Scan = _PLAIN.scan_once  # type: ignore[attr-defined]
        checked: _Scan = _DECODER.scan_once  # type: ignore[attr-defined]
        while True:
            if len(self._buf) - self._pos < limit and not self._eof:
                self._ensure(limit)
            buf = self._buf
            pos = self._pos = _WS.match(buf, self._pos).end()  # type: ignore[union-attr]
            try:
                value, end = scan(buf, pos)
                # Each key is a string followed by ':'; a '":' inside a string is escaped ('\\":'). So as many
                # '":' in the item's text as keys in its top object means no key appears twice anywhere.
                if not (type(value) is dict and buf.count('":', pos, end) == len(value)):
                    value, end = checked(buf, pos)
            except (StopIteration, json.JSONDecodeError) as e:
                if self._eof:
                    raise JsonError(f"{what} holds something that is not JSON") from None
                del e
                yield TOO_BIG
                end = self._pos
            except RecursionError:
                raise JsonError("values are nested too deeply") from None
            except ValueError:  # an integer of more than 4300 digits
                raise JsonError("a number has thousands of digits") from None
            else:
                self._pos = end
                yield value
            m = _WS.match(self._buf, self._pos)
            at = m.end() if m else self._pos
            if at >= len(self._buf):
                self._pos = at
                ch = self.take()
            else:
                ch = self._buf[at]
                self._pos = at + 1
            if ch == "]":
                return
            if ch != ",":
                raise JsonError(f"expected ',' or ']' in {what}, found {ch!r}" if ch else f"{what} is not closed")

    def skip(self, what: str, depth: int = 0) -> None:
        """Read past any value (a field this reader does not know), checking it is JSON."""
        ch = self.peek()
        if ch == '"':
            self.string(1024 * 1024, what)
        elif ch in "[{":
            if depth >= MAX_DEPTH:
                raise JsonError(f"{what} is nested more than {MAX_DEPTH} deep")
            if ch == "[":
                for _ in self.items(what):
                    self.skip(what, depth + 1)
            else:
                for _ in self.keys(what, 1024 * 1024):
                    self.skip(what, depth + 1)
        elif ch and ch in "-0123456789":
            self._ensure(MAX_NUMBER_CHARS + 2)
            m = _NUMBER.match(self._buf, self._pos)
            if m is None or m.end() - self._pos > MAX_NUMBER_CHARS:
                raise JsonError(f"{what} holds a malformed or overlong number")
            self._pos = m.end()
        else:
            self._ensure(5)
            for word in ("true", "false", "null"):
                if self._buf.startswith(word, self._pos):
                    self._pos += len(word)
                    return
            raise JsonError(f"{what} is not a JSON value")
