"""Canonical JSON (RFC 8785, JSON Canonicalization Scheme) for everything the ledger signs.

A signature or a hash over JSON is only meaningful if there is exactly one byte string
per value; RFC 8785 fixes key order (UTF-16 code units, §3.2.3), number formatting
(ECMAScript, §3.2.2.3) and string escaping (§3.2.2.2). Parsing is strict in the other
direction: bytes are accepted only if they are *already* canonical, so two different byte
strings can never carry one record.

Serialisation walks the value here and leaves the two delicate parts to reference code:
string escaping to the standard library's C ``encode_basestring`` (its escape set is
exactly §3.2.2.2's: ``"``, ``\\``, and U+0000–U+001F with the five short forms) and
number formatting of floats to the ``rfc8785`` package. The ``rfc8785`` package alone
does the whole walk in Python a token at a time, and the ledger re-encodes its contract
state every block: this is several times faster, and a property test checks it byte for
byte against ``rfc8785.dumps``.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import rfc8785

from .errors import MalformedRecord

_MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 64
"""Deepest nesting of arrays and objects any record may have (ours stay below 10)."""
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_nesting(data: bytes, *, where: str, limit: int = MAX_DEPTH) -> None:
    """MalformedRecord if the JSON text ``data`` nests arrays and objects deeper than
    ``limit``, checked before it is parsed: the standard library's C parser recurses once
    per level, and a file of a million ``[`` exhausts the C stack (a segfault, not an
    exception) wherever the interpreter's recursion limit has been raised."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # the common case, at C speed: too few brackets to nest that deep
    depth = 0
    for bracket in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        depth += 1 if bracket in b"[{" else -1
        if depth > limit:
            raise MalformedRecord(f"{where}: JSON nested deeper than {limit} levels")


def _utf16_order(key: str) -> bytes:
    return key.encode("utf-16-be")


def _encode(obj: Any, out: Callable[[str], None]) -> None:
    if isinstance(obj, str):
        out(encode_basestring(obj))
    elif obj is None:
        out("null")
    elif obj is True:
        out("true")
    elif obj is False:
        out("false")
    elif isinstance(obj, int):
        if abs(obj) > _MAX_SAFE_INTEGER:
            raise MalformedRecord(
                f"value cannot be canonicalised as RFC 8785 JSON: integer {obj} is beyond ±(2^53 - 1)"
            )
        out(int.__repr__(obj))
    elif isinstance(obj, float):
        try:
            out(rfc8785.dumps(float(obj)).decode("ascii"))
        except rfc8785.CanonicalizationError as exc:
            raise MalformedRecord(f"value cannot be canonicalised as RFC 8785 JSON: {exc}") from None
    elif isinstance(obj, dict):
        try:
            keys = sorted(obj, key=_utf16_order)
        except AttributeError:
            raise MalformedRecord(
                f"value cannot be canonicalised as RFC 8785 JSON: object keys must be strings, got {list(obj)!r}"
            ) from None
        except UnicodeEncodeError as exc:
            raise MalformedRecord(
                f"value cannot be canonicalised as RFC 8785 JSON: an object key is not valid Unicode ({exc.reason})"
            ) from None
        out("{")
        for position, key in enumerate(keys):
            if position:
                out(",")
            out(encode_basestring(key))
            out(":")
            _encode(obj[key], out)
        out("}")
    elif isinstance(obj, (list, tuple)):
        out("[")
        for position, item in enumerate(obj):
            if position:
                out(",")
            _encode(item, out)
        out("]")
    else:
        raise MalformedRecord(
            f"value cannot be canonicalised as RFC 8785 JSON: unsupported type {type(obj).__name__}"
        )


@functools.lru_cache(maxsize=1 << 16)
def _float_text(value: float) -> str:
    """ECMAScript spelling of a finite double (memoised: ledgers repeat the same σ, q and ε
    in every submission and close). ``-0.0 == 0.0`` share an entry; both are ``0``. NaN and
    infinities raise, and a raise is never cached."""
    return rfc8785.dumps(value).decode("ascii")


def _fast(obj: Any) -> str:
    """:func:`_encode` for the exact JSON types the ledger writes, returning the text.

    Anything else (subclasses, non-string or non-ASCII keys, values JCS refuses) is handed
    to :func:`_encode` for that subtree, which writes the same bytes or raises its error.
    """
    kind = type(obj)
    if kind is str:
        return encode_basestring(obj)
    if kind is dict:
        keys = list(obj)
        for key in keys:
            if type(key) is not str or not key.isascii():
                break
        else:
            # ASCII keys: code point order is UTF-16 code unit order.
            keys.sort()
            return "{" + ",".join([encode_basestring(k) + ":" + _fast(obj[k]) for k in keys]) + "}"
    elif kind is list or kind is tuple:
        return "[" + ",".join([_fast(item) for item in obj]) + "]"
    elif kind is int:
        if -_MAX_SAFE_INTEGER <= obj <= _MAX_SAFE_INTEGER:
            return int.__repr__(obj)
    elif kind is float:
        if math.isfinite(obj):
            return _float_text(obj)
    elif obj is None:
        return "null"
    elif obj is True:
        return "true"
    elif obj is False:
        return "false"
    parts: list[str] = []
    _encode(obj, parts.append)
    return "".join(parts)


def canonical_bytes(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj`` (dicts with str keys, lists/tuples, str, int, float, bool, None).

    Raises :class:`MalformedRecord` for what JCS cannot represent: NaN or infinities
    (RFC 8785 §3.2.2.3 / I-JSON), integers beyond ±2^53 - 1, non-string keys, strings
    that are not Unicode scalar values (lone surrogates), other types.
    """
    text = _fast(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRecord(
            f"value cannot be canonicalised as RFC 8785 JSON: a string is not valid Unicode ({exc.reason})"
        ) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate object key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-JSON constant {name}")


def _parse_int(text: str) -> int | float:
    """JCS numbers are IEEE doubles: an integer beyond ±(2^53 - 1) is read as the double it
    denotes (so ``canonical_bytes(2.0**53)`` parses back), and the canonical re-check then
    refuses spellings that no double has, such as 9007199254740993."""
    value = int(text)
    if abs(value) <= _MAX_SAFE_INTEGER:
        return value
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"integer of {len(text)} digits is outside the double range") from None


def parse_canonical(data: bytes, *, where: str) -> Any:
    """Parse RFC 8785 JSON, refusing anything that is not byte-for-byte canonical.

    ``where`` names the source (e.g. ``"entry 17"`` or a blob CID) in the error message.
    Raises :class:`MalformedRecord` for invalid UTF-8, invalid JSON, duplicate keys,
    NaN/Infinity, or JSON that is valid but not in canonical form (whitespace, key order,
    number spelling, escapes).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedRecord(f"{where}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    check_nesting(data, where=where)
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_int=_parse_int,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRecord(f"{where}: not valid JSON: {exc}") from None
    try:
        again = canonical_bytes(value)
    except MalformedRecord as exc:
        raise MalformedRecord(f"{where}: JSON outside the RFC 8785 domain: {exc}") from None
    if again != data:
        raise MalformedRecord(
            f"{where}: JSON is not in RFC 8785 canonical form "
            f"({len(data)} bytes, canonical form has {len(again)})"
        )
    return value
