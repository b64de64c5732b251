"""A non-interactive proof that a Paillier modulus is well formed, and its checking.

Paillier's verifiable decryption (see :mod:`.paillier`) rests on the encryption map
(m, r) -> (1 + m n) r^n mod n^2 being a bijection Z_n x Z_n^* -> Z_(n^2)^*, which holds
exactly when gcd(n, phi(n)) = 1 (so n is also square-free). A key holder who publishes
n = p^2 q instead can open one ciphertext to several totals. This module lets it prove the
property without revealing p and q, after Goldberg, Reyzin, Sagga and Baldimtsi,
"Efficient noninteractive certification of RSA moduli and beyond" (ASIACRYPT 2019), §3.2:

* The verifier checks that n is odd, composite and has no prime factor below ALPHA = 2^19.
* The prover publishes m = ceil(128 / 19) = 7 values sigma_i with sigma_i^n = rho_i mod n,
  where rho_i are derived from n by hashing (Fiat-Shamir), so the prover cannot choose them.

Soundness: if a prime p divides gcd(n, phi(n)), then p >= ALPHA and x -> x^n mod n is at
least p-to-one on Z_n^*, so a random rho_i has an n-th root with probability at most 1/p.
Seven hashed challenges leave a cheating prover a chance below ALPHA^-7 = 2^-133. An
honest prover computes sigma_i = rho_i^(n^-1 mod phi(n)) mod n.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gmpy2

from .errors import MalformedInput

SCHEME = "grsb19-nth-roots/v1"
ALPHA_BITS = 19
ALPHA = 1 << ALPHA_BITS
"""Every prime factor of n must be at least this (checked by trial division)."""
SECURITY_BITS = 128
ROOTS = math.ceil(SECURITY_BITS / ALPHA_BITS)
"""Challenges: ALPHA^-ROOTS <= 2^-SECURITY_BITS."""
_DOMAIN = b"bfl-private/paillier-modulus-proof/v1"


class ModulusProofError(MalformedInput):
    """A Paillier modulus whose well-formedness proof is missing, malformed or false."""


@functools.cache
def _small_primes_product() -> int:
    """The product of all primes below ALPHA: one gcd with it is the whole trial division."""
    product = gmpy2.mpz(1)
    p = gmpy2.mpz(2)
    while p < ALPHA:
        product *= p
        p = gmpy2.next_prime(p)
    return int(product)


def challenges(n: int) -> list[int]:
    """The ROOTS values rho_i in [1, n), derived from n alone (rejection-sampled SHAKE-256)."""
    size = (n.bit_length() + 7) // 8
    out: list[int] = []
    counter = 0
    while len(out) < ROOTS:
        seed = _DOMAIN + n.to_bytes(size, "big") + len(out).to_bytes(4, "big") + counter.to_bytes(4, "big")
        candidate = int.from_bytes(hashlib.shake_256(seed).digest(size), "big") >> (8 * size - n.bit_length())
        counter += 1
        if 0 < candidate < n:
            out.append(candidate)
            counter = 0
    return out


@dataclass(frozen=True)
class ModulusProof:
    """The n-th roots of the hashed challenges."""

    roots: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"scheme": SCHEME, "alpha_bits": ALPHA_BITS, "roots": [format(r, "x") for r in self.roots]}

    @classmethod
    def from_json(cls, data: Any) -> ModulusProof:
        if not isinstance(data, Mapping) or data.get("scheme") != SCHEME or data.get("alpha_bits") != ALPHA_BITS:
            raise ModulusProofError(f"modulus proof must be a {SCHEME} record with alpha_bits {ALPHA_BITS}")
        roots = data.get("roots")
        if not isinstance(roots, list) or len(roots) != ROOTS:
            raise ModulusProofError(f"modulus proof must hold exactly {ROOTS} roots")
        parsed = []
        for index, value in enumerate(roots):
            if not isinstance(value, str) or not value or value.strip("0123456789abcdef"):
                raise ModulusProofError(f"modulus proof root {index} is not a lower-case hex string")
            parsed.append(int(value, 16))
        return cls(tuple(parsed))


def prove_modulus(p: int, q: int) -> ModulusProof:
    """The key holder's proof for n = p q (distinct primes with gcd(n, phi(n)) = 1)."""
    if p == q or not gmpy2.is_prime(p) or not gmpy2.is_prime(q):
        raise ModulusProofError("a Paillier modulus is the product of two distinct primes")
    n, phi = p * q, (p - 1) * (q - 1)
    if math.gcd(n, phi) != 1:
        raise ModulusProofError("gcd(n, phi(n)) != 1: this modulus is not a Paillier modulus")
    exponent = int(gmpy2.invert(n, phi))
    return ModulusProof(tuple(int(gmpy2.powmod(rho, exponent, n)) for rho in challenges(n)))


def verify_modulus(n: int, proof: ModulusProof) -> None:
    """Check that ``proof`` shows gcd(n, phi(n)) = 1 for a composite n; raises ModulusProofError."""
    if n < 3 or n % 2 == 0:
        raise ModulusProofError("modulus must be an odd integer above 2")
    if gmpy2.is_prime(n):
        raise ModulusProofError("modulus is prime: anyone could decrypt under it")
    if math.gcd(n, _small_primes_product()) != 1:
        raise ModulusProofError(f"modulus has a prime factor below 2^{ALPHA_BITS}")
    if len(proof.roots) != ROOTS:
        raise ModulusProofError(f"modulus proof holds {len(proof.roots)} roots, {ROOTS} required")
    for index, (rho, sigma) in enumerate(zip(challenges(n), proof.roots)):
        if math.gcd(rho, n) != 1:
            raise ModulusProofError(f"challenge {index} shares a factor with the modulus")
        if not 0 < sigma < n or gmpy2.powmod(sigma, n, n) != rho:
            raise ModulusProofError(f"root {index} is not an n-th root of its challenge: gcd(n, phi(n)) = 1 "
                                    "is not shown (a modulus such as p^2 q cannot pass)")
