"""Secret randomness for DP-SGD: Poisson sampling and Gaussian noise from a CSPRNG.

DP holds only if nobody can predict or replay the noise and the sampling. torch's default
generator is a Mersenne Twister, whose state follows from a seed (and from 624 outputs),
and Opacus's own ``secure_mode`` needs ``torchcsprng``, which has no build for the torch
this project runs (none on PyPI for torch 2). So every draw here comes from AES-256 in
counter mode under a key of 256 bits read from the operating system's CSPRNG when the
generator is made: a standard keystream generator (NIST SP 800-90A's CTR_DRBG without
reseeding, which a short DP-SGD run never needs). One :class:`SecureRandom` is made per
client per round, is never seeded from anything else, and its key is never stored, so a
run cannot be replayed even by someone who knows every public value of the federation.

Gaussians: Box–Muller on 53-bit uniforms, then, as Opacus's ``secure_mode`` does against
floating-point attacks on the Gaussian mechanism (Mironov 2012; Holohan and Braghin 2021),
each noise value is the sum of four draws scaled by 1/2 (same N(0, σ²), but the low bits
of one sample no longer reveal the value it was added to).
"""
from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 32
"""AES-256: 256 bits from the OS, above the ≥ 128 bits the privacy design asks for."""
_DRAWS_PER_NOISE_VALUE = 4


class SecureRandom:
    """Uniforms, Bernoulli masks and Gaussians from a fresh, unrecorded AES-256-CTR keystream."""

    def __init__(self) -> None:
        key = os.urandom(KEY_BYTES)
        # The counter starts at a random value too: nothing about the stream is fixed.
        self._keystream = Cipher(algorithms.AES(key), modes.CTR(os.urandom(16))).encryptor()

    def _words(self, count: int) -> np.ndarray:
        return np.frombuffer(self._keystream.update(bytes(8 * count)), dtype="<u8")

    def uniform(self, count: int) -> np.ndarray:
        """``count`` float64 values uniform on the open interval (0, 1), 53 random bits each."""
        return ((self._words(count) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53

    def bernoulli(self, count: int, probability: float) -> np.ndarray:
        """A boolean mask of ``count`` independent coins, each True with ``probability``."""
        return self.uniform(count) < probability

    def standard_normal(self, count: int) -> np.ndarray:
        """``count`` independent N(0, 1) values (Box–Muller: two uniforms per pair)."""
        pairs = (count + 1) // 2
        u = self.uniform(2 * pairs).reshape(2, pairs)
        radius = np.sqrt(-2.0 * np.log(u[0]))
        angle = 2.0 * np.pi * u[1]
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]

    def gaussian_noise(self, shape: tuple[int, ...], *, std: float) -> np.ndarray:
        """N(0, std²) noise of ``shape`` (float64), each value the sum of four draws over 2."""
        count = int(np.prod(shape, dtype=np.int64))
        draws = self.standard_normal(_DRAWS_PER_NOISE_VALUE * count).reshape(_DRAWS_PER_NOISE_VALUE, count)
        return (draws.sum(axis=0) * (std / 2.0)).reshape(shape)
