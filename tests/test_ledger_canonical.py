"""RFC 8785 canonical JSON: published examples, strict parsing, round trips."""
from __future__ import annotations

import json
import math
import sys

import pytest
import rfc8785
from bfl_private.ledger.canonical import MAX_DEPTH, canonical_bytes, check_nesting, parse_canonical
from bfl_private.ledger.errors import MalformedRecord
from hypothesis import given, settings
from hypothesis import strategies as st

# RFC 8785 §3.2.2 example: input as a producer might write it, and its canonical form.
RFC8785_INPUT = (
    '{\n  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],\n'
    '  "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",\n'
    '  "literals": [null, true, false]\n}'
)
RFC8785_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
).encode("utf-8")


def test_rfc8785_example_serialises_exactly() -> None:
    assert canonical_bytes(json.loads(RFC8785_INPUT)) == RFC8785_OUTPUT
    assert parse_canonical(RFC8785_OUTPUT, where="rfc example") == json.loads(RFC8785_INPUT)


def test_rfc8785_example_input_is_refused_as_not_canonical() -> None:
    with pytest.raises(MalformedRecord, match="rfc input.*canonical form"):
        parse_canonical(RFC8785_INPUT.encode(), where="rfc input")


def test_keys_sort_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33, unlike code points.
    obj = {"\ufb33": 1, "\U0001f600": 2, "\u20ac": 3, "\r": 4, "1": 5, "\u0080": 6, "\u00f6": 7}
    order = list(json.loads(canonical_bytes(obj)))
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 2**53, {1: "x"}, b"raw", {"a": {1}}])
def test_values_outside_jcs_are_refused(value) -> None:
    with pytest.raises(MalformedRecord):
        canonical_bytes(value)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b'{"a":1,"a":2}', "duplicate"),
        (b'{"a":NaN}', "NaN"),
        (b'[Infinity]', "Infinity"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"a":1', "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"b":1,"a":2}', "canonical form"),
        (b'{"a": 1}', "canonical form"),
        (b"1.0", "canonical form"),
        (b'"\\u0041"', "canonical form"),
        (b"9007199254740993", "canonical form"),  # no double has this value
        (b"1" + b"0" * 400, "outside the double range"),
        (b"1e400", "RFC 8785 domain"),
    ],
)
def test_parse_refuses_non_canonical_bytes_naming_where(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=f"entry 7: .*{reason}"):
        parse_canonical(data, where="entry 7")


def test_integral_doubles_beyond_2_53_round_trip() -> None:
    for value in (2.0**53, -(2.0**60), 1e21):
        data = canonical_bytes(value)
        assert parse_canonical(data, where="big") == value


def test_parse_refuses_non_bytes() -> None:
    with pytest.raises(MalformedRecord, match="expected bytes"):
        parse_canonical('{"a":1}', where="entry 1")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_round_trip_and_uniqueness(value) -> None:
    data = canonical_bytes(value)
    parsed = parse_canonical(data, where="property")
    assert parsed == value
    assert canonical_bytes(parsed) == data
    # Any other spelling of the same value is refused.
    spaced = json.dumps(value, indent=1, ensure_ascii=True).encode()
    if spaced != data:
        with pytest.raises(MalformedRecord):
            parse_canonical(spaced, where="property")


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_serialisation_matches_the_reference_rfc8785_package_byte_for_byte(value) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    ["\ud800", {"\udfff": 1}, [1, "ok", "x\ud83d"], 2**53, -(2**53), {"a": [math.nan]}, (1, math.inf)],
)
def test_refusals_match_the_reference_rfc8785_package(value) -> None:
    # The reference lets a lone surrogate in a key escape as UnicodeEncodeError; we name it.
    with pytest.raises((rfc8785.CanonicalizationError, UnicodeEncodeError)):
        rfc8785.dumps(value)
    with pytest.raises(MalformedRecord, match="cannot be canonicalised"):
        canonical_bytes(value)


def nested(depth: int) -> object:
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_deep_nesting_is_refused_before_parsing_even_with_a_high_recursion_limit() -> None:
    """A million ``[`` would overflow the C stack inside ``json.loads`` (a segfault) once
    the interpreter's recursion limit is raised, as some libraries do; it is refused first."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10**6)
    try:
        for data in (b"[" * 1_000_000, canonical_bytes(nested(MAX_DEPTH + 1))):
            with pytest.raises(MalformedRecord, match=f"entry 3: JSON nested deeper than {MAX_DEPTH}"):
                parse_canonical(data, where="entry 3")
    finally:
        sys.setrecursionlimit(limit)
    assert parse_canonical(canonical_bytes(nested(MAX_DEPTH)), where="x") == nested(MAX_DEPTH)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_brackets_inside_strings_do_not_count_as_nesting(value) -> None:
    """The depth check reads strings as strings: brackets and escaped quotes inside them
    never make a shallow record look deep."""
    tricky = {"s": "[" * (MAX_DEPTH + 5) + '\\"{' * (MAX_DEPTH + 5), "v": value}
    assert parse_canonical(canonical_bytes(tricky), where="x") == tricky
    check_nesting(json.dumps(tricky, indent=1).encode(), where="x")
