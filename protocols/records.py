"""Field checks shared by the protocols' typed records (their transcripts).

A transcript is committed to the ledger as JSON and read back by validators and auditors
who did not write it, so each record parses it once, field by field: an object with
exactly the expected fields (a missing or an extra one is refused), each of the expected
type (a bool is not a number, though Python says it is an int). Every refusal is a
:class:`MalformedInput` naming where the record was read and what is wrong.
(``bfl_private.round_records.exact_fields`` does the same for ledger payloads, with the
ledger's error; the protocols may not import the application.)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from .errors import MalformedInput

T = TypeVar("T")


def exact_fields(data: Any, required: Collection[str], *, optional: Collection[str] = (), what: str,
                 where: str) -> dict[str, Any]:
    """``data`` as a dict when it is an object holding every ``required`` field, any of the
    ``optional`` ones and nothing else; MalformedInput naming ``where`` and ``what`` otherwise."""
    if not isinstance(data, Mapping):
        raise MalformedInput(f"{where}: a {what} must be a JSON object, got {type(data).__name__}")
    missing, extra = sorted(set(required) - set(data)), sorted(set(data) - set(required) - set(optional))
    if missing or extra:
        raise MalformedInput(f"{where}: a {what} has the fields {sorted(required)} (optional: {sorted(optional)}); "
                             f"missing {missing}, unexpected {extra}")
    return dict(data)


def integer(value: Any, *, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedInput(f"{where}: {what} must be an integer, got {type(value).__name__}")
    return value


def number(value: Any, *, what: str, where: str) -> float:
    """A finite JSON number (int or float, never a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MalformedInput(f"{where}: {what} must be a finite number, got {value!r:.40}")
    return float(value)


def text(value: Any, *, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedInput(f"{where}: {what} must be a string, got {type(value).__name__}")
    return value


def texts(value: Any, *, what: str, where: str) -> tuple[str, ...]:
    """A JSON list of strings (client names, digests) as a tuple."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedInput(f"{where}: {what} must be a list of strings")
    return tuple(value)


def hex_bytes(value: Any, *, what: str, where: str, size: int | None = None) -> bytes:
    """Lower-case hex as bytes (of ``size`` when given). Only the form ``bytes.hex()``
    writes is accepted, so the record writes back exactly the JSON it was read from."""
    raw = None
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            pass
    if raw is None or raw.hex() != value:
        raise MalformedInput(f"{where}: {what} must be lower-case hex, got {value!r:.40}")
    if size is not None and len(raw) != size:
        raise MalformedInput(f"{where}: expected {size} bytes for {what}, got {len(raw)}")
    return raw


def keyed(value: Any, parse: Callable[[Any, str], T], *, what: str, where: str) -> dict[str, T]:
    """A JSON object keyed by client name, each value parsed by ``parse(value, its where)``."""
    if not isinstance(value, Mapping):
        raise MalformedInput(f"{where}: {what} must be an object keyed by client, got {type(value).__name__}")
    return {name: parse(item, f"{where}, {what} of {name!r}") for name, item in value.items()}
