"""Mask PRG: AES-128-CTR keystream as uint32, chunked expansion equals the reference."""

from __future__ import annotations

import numpy as np
import pytest
from bfl_private.protocols.errors import MalformedInput
from bfl_private.protocols.prg import SEED_BYTES, MaskExpander, expand, new_seed
from Crypto.Cipher import AES
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare


def test_keystream_matches_an_independent_aes_ctr() -> None:
    seed = bytes(range(16))
    # pycryptodome as the independent implementation: counter block 0, big-endian increment.
    reference = AES.new(seed, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(4 * 1000))
    np.testing.assert_array_equal(expand(seed, 1000), np.frombuffer(reference, dtype="<u4"))


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(0, 5000),
    chunk=st.integers(1, 700),
    n_add=st.integers(0, 3),
    n_sub=st.integers(0, 3),
    data=st.data(),
)
def test_chunked_apply_equals_sum_of_reference_masks(
    length: int, chunk: int, n_add: int, n_sub: int, data
) -> None:
    seeds = [
        data.draw(st.binary(min_size=SEED_BYTES, max_size=SEED_BYTES)) for _ in range(n_add + n_sub)
    ]
    start = np.frombuffer(
        data.draw(st.binary(min_size=4 * length, max_size=4 * length)), dtype=np.uint32
    ).copy()
    expected = start.astype(np.int64)
    for i, seed in enumerate(seeds):
        expected += expand(seed, length) if i < n_add else -expand(seed, length).astype(np.int64)
    expander = MaskExpander(chunk_words=chunk)
    target = start.copy()
    expander.apply(target, add=seeds[:n_add], subtract=seeds[n_add:])
    np.testing.assert_array_equal(target, (expected % 2**32).astype(np.uint32))
    assert expander.words_generated == length * len(seeds)


def test_add_then_subtract_cancels_exactly() -> None:
    x = np.arange(12345, dtype=np.uint32)
    target = x.copy()
    seeds = [new_seed() for _ in range(4)]
    expander = MaskExpander()
    expander.apply(target, add=seeds)
    assert not np.array_equal(target, x)
    expander.apply(target, subtract=seeds[::-1])
    np.testing.assert_array_equal(target, x)


def test_mask_bytes_are_uniform() -> None:
    mask = expand(bytes(16), 1 << 16)  # fixed seed: deterministic
    counts = np.bincount(mask.view(np.uint8), minlength=256)
    assert chisquare(counts).pvalue > 1e-4
    bits = np.unpackbits(mask.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 0.02)


def test_seeds_are_fresh_and_128_bits() -> None:
    seeds = {new_seed() for _ in range(100)}
    assert len(seeds) == 100 and all(len(s) == 16 for s in seeds)


@pytest.mark.parametrize("seed", [b"short", bytes(17), bytes(32), "x" * 16])
def test_bad_seed_refused(seed) -> None:
    with pytest.raises(MalformedInput, match="mask seed must be 16 bytes"):
        MaskExpander().apply(np.zeros(4, dtype=np.uint32), add=[seed])


def test_bad_target_refused() -> None:
    with pytest.raises(MalformedInput, match="uint32"):
        MaskExpander().apply(np.zeros(4, dtype=np.int64), add=[new_seed()])
    with pytest.raises(MalformedInput, match="contiguous"):
        MaskExpander().apply(np.zeros(8, dtype=np.uint32)[::2], add=[new_seed()])

