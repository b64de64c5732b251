"""Mask expansion: AES-128-CTR keystreams read as uint32 vectors and added in place.

A mask is the keystream of AES-128 in counter mode (NIST SP 800-38A §6.5) under a
128-bit seed, counter block starting at zero, read as little-endian uint32 words. Every
seed is used for exactly one mask (self-mask seeds are fresh per round; pairwise seeds
are HKDF outputs bound to the round and the pair), so a fixed initial counter is safe.
128-bit seeds match the ~128-bit security of X25519 from which pairwise seeds come.

Why this shape: the masking protocol's cost is dominated by keystream generation.
``cryptography``'s ``update_into`` writes AES-NI output straight into a reused buffer;
:meth:`MaskExpander.apply` walks the accumulator chunk by chunk and, for each chunk,
runs every seed's cipher over it, so both the keystream buffer and the accumulator chunk
stay in cache and the uint32 add costs a fraction of the AES. numpy's generators are
several times slower, and folding seeds into a 32-bit Mersenne Twister (as Flower does)
makes masks brute-forceable: never do that.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from .errors import MalformedInput

SEED_BYTES = 16
"""Length of every mask seed: an AES-128 key."""

_WORD = np.dtype("<u4")
# Modes are immutable, so one counter-mode object serves every cipher (it halves setup).
_ZERO_COUNTER_MODE = modes.CTR(bytes(16))
_BLOCK = 16
DEFAULT_CHUNK_WORDS = 1 << 15
"""Words per chunk (128 KiB): small enough for L2, large enough to amortise the calls."""
# The plaintext whose encryption is the keystream: immutable, so every expander with a
# chunk up to the default shares this one block instead of allocating its own.
_SHARED_ZEROS = memoryview(bytes(4 * DEFAULT_CHUNK_WORDS))


def new_seed() -> bytes:
    """A fresh 128-bit seed from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


def _cipher(seed: bytes) -> CipherContext:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise MalformedInput(
            f"mask seed must be {SEED_BYTES} bytes, got {type(seed).__name__} of length {len(seed)}"
        )
    return Cipher(algorithms.AES(bytes(seed)), _ZERO_COUNTER_MODE).encryptor()


class MaskExpander:
    """Adds and subtracts seed-expanded masks into uint32 vectors, reusing its buffers.

    One expander per party; it is not thread-safe (the buffers are shared between calls).
    ``words_generated`` counts the keystream words produced, for benchmarks.
    """

    def __init__(self, *, chunk_words: int = DEFAULT_CHUNK_WORDS) -> None:
        if chunk_words < 1:
            raise MalformedInput(f"chunk_words must be >= 1, got {chunk_words}")
        self.chunk_words = chunk_words
        self._zeros = (
            _SHARED_ZEROS
            if chunk_words <= DEFAULT_CHUNK_WORDS
            else memoryview(bytes(4 * chunk_words))
        )
        # The keystream buffer is sized on first use to the vectors actually masked (at
        # most one chunk): a round makes one expander per party, and two full-chunk
        # buffers per party, allocated and faulted in, cost more than masking a short
        # vector (about 3% of a round of 10 clients with 10^4 words).
        self._buffer = bytearray()
        self._words = np.empty(0, dtype=_WORD)
        self.words_generated = 0

    def _keystream_buffer(self, words: int) -> np.ndarray:
        if self._words.shape[0] < words:
            # update_into needs len(input) + block_size - 1 bytes of room.
            self._buffer = bytearray(4 * words + _BLOCK - 1)
            self._words = np.frombuffer(self._buffer, dtype=_WORD, count=words)
        return self._words

    def apply(
        self, target: np.ndarray, *, add: Sequence[bytes] = (), subtract: Sequence[bytes] = ()
    ) -> None:
        """``target += Σ PRG(a) − Σ PRG(s)`` modulo 2^32, in place."""
        if target.dtype != np.uint32 or target.ndim != 1 or not target.flags.c_contiguous:
            raise MalformedInput(
                f"mask target must be a contiguous 1-D uint32 array, got {target.dtype} {target.shape}"
            )
        length = target.shape[0]
        adders = [_cipher(seed) for seed in add]
        subtractors = [_cipher(seed) for seed in subtract]
        step = min(self.chunk_words, max(length, 1))
        keystream = self._keystream_buffer(step)
        for start in range(0, length, step):
            n = min(step, length - start)
            chunk = target[start : start + n]
            words = keystream[:n]
            data = self._zeros[: 4 * n]
            for cipher in adders:
                cipher.update_into(data, self._buffer)
                np.add(chunk, words, out=chunk)
            for cipher in subtractors:
                cipher.update_into(data, self._buffer)
                np.subtract(chunk, words, out=chunk)
        self.words_generated += length * (len(adders) + len(subtractors))


def expand(seed: bytes, length: int) -> np.ndarray:
    """The mask of ``seed`` as a fresh uint32 vector (reference path for tests and audits)."""
    if length < 0:
        raise MalformedInput(f"mask length must be >= 0, got {length}")
    keystream = _cipher(seed).update(bytes(4 * length))
    return np.frombuffer(keystream, dtype=_WORD).astype(np.uint32)
