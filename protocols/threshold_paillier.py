"""Threshold decryption of Paillier ciphertexts with publicly checkable partial decryptions.

Construction
------------
Shoup's threshold RSA (EUROCRYPT 2000) carried to Paillier as in Damgård and Jurik (PKC
2001, s = 1), for ``phe`` ciphertexts c = (1 + m n) r^n mod n^2:

* The secret exponent d satisfies d = 0 mod lambda(n) (so c^d = (1 + n)^(d m), the
  randomness vanishes) and its residue ``theta = d mod n`` is public and invertible (a
  dealer picks d = 1 mod n; a distributed generation may publish a masked residue).
* d is Shamir-shared with an integer polynomial f of degree ``quorum - 1`` reduced
  modulo n lambda(n), the exponent of Z_(n^2)^*. Party i (abscissa i, 1-based) holds
  s_i = f(i) and publishes the verification key v_i = v^(Delta s_i) mod n^2, where
  Delta = parties! and v is a square derived from n by hashing (nobody chooses it).
* A partial decryption is c_i = c^(2 Delta s_i) mod n^2 with a Fiat-Shamir proof that
  log_(c^4)(c_i^2) = log_v(v_i) (Chaum-Pedersen equality of discrete logs, with the
  response over the integers since the group order is unknown), bound to a context
  string (the round) so it cannot be replayed elsewhere.
* Any ``quorum`` valid partials combine: with integer coefficients mu_i = Delta *
  prod_(j != i) j / (j - i), prod c_i^(2 mu_i) = c^(4 Delta^2 d), so
  m = L(that) * (4 Delta^2 theta)^-1 mod n, L(x) = (x - 1) / n.

Anyone holding the public :class:`ThresholdPublicKey` checks each partial and redoes
the combination, so a published total needs no trusted decryptor; a partial whose proof
fails is refused and its party named (:class:`BadPartialDecryption`). Fewer than
``quorum`` shares determine nothing about d beyond its public residue (Shamir), so they
cannot decrypt.

Soundness note: Shoup's proof argument uses safe primes (a cyclic group of squares).
For moduli without that structure, the proof shows equality of logarithms only up to
elements of small order; Fouque, Poupard and Stern (FC 2000) analyse threshold Paillier
without safe primes. The partial is squared (and c raised to the 4th) so that the
order-2 components, which everyone can see, do not matter.

Key generation is *not* in this module: :func:`deal_shares` is a trusted dealer that
knows p and q (it is labelled so everywhere it is used); see ``paillier_dkg`` for what
exists without one.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gmpy2
import rfc8785

from .errors import (
    ConfigurationError,
    DecryptionProofError,
    MalformedInput,
    TooManyDropouts,
    WrongKey,
)

_HASH_BITS = 256
_SECURITY_BITS = 128
"""Statistical hiding of the share in a proof's response z = r + e Delta s_i."""
_SHARE_FORMAT = "bfl-private/threshold-paillier-share/v1"
DEALER = "trusted-dealer"
"""Key provenance: one party generated p, q and every share, and could decrypt alone."""
KEY_GENERATIONS = (DEALER,)


class BadPartialDecryption(DecryptionProofError):
    """A partial decryption whose proof does not verify: its party is named."""

    def __init__(self, message: str, *, party: str) -> None:
        super().__init__(message)
        self.party = party


# ---------------------------------------------------------------- helpers


def _hex(value: int) -> str:
    return format(value, "x")


def _parse_hex(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value or value.strip("0123456789abcdef"):
        raise MalformedInput(f"{what}: expected a lower-case hex string, got {str(value)[:40]!r}")
    return int(value, 16)


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _hash_ints(tag: bytes, *values: int) -> int:
    """SHA-256 of length-prefixed big-endian integers: unambiguous framing."""
    digest = hashlib.sha256(tag)
    for value in values:
        encoded = _int_bytes(value)
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
    return int.from_bytes(digest.digest(), "big")


def verification_base(n: int) -> int:
    """v = x^2 mod n^2 for x expanded from SHA-256(n): a square nobody picked."""
    n2 = n * n
    counter = 0
    while True:
        blocks = -(-2 * n.bit_length() // 256) + 1
        x = 0
        for block in range(blocks):
            x = (x << 256) | _hash_ints(b"bfl-private/threshold-paillier/v", n, counter, block)
        x %= n2
        if x > 1 and math.gcd(x, n) == 1:
            return int(gmpy2.powmod(x, 2, n2))
        counter += 1


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(abscissas: tuple[int, ...], delta: int) -> tuple[int, ...]:
    """mu_i = Delta * prod_(j != i) j / (j - i): integers because Delta = parties!."""
    coefficients = []
    for i in abscissas:
        numerator, denominator = delta, 1
        for j in abscissas:
            if j != i:
                numerator *= j
                denominator *= j - i
        quotient, remainder = divmod(numerator, denominator)
        assert remainder == 0, "Delta * Lagrange coefficient must be an integer"
        coefficients.append(quotient)
    return tuple(coefficients)


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class ThresholdPublicKey:
    """Everything needed to encrypt (n), check partial decryptions and combine them."""

    n: int
    parties: tuple[str, ...]
    """Share holders; party ``parties[i]`` has abscissa i + 1."""
    quorum: int
    """How many valid partial decryptions decrypt; fewer learn nothing."""
    verification_keys: tuple[int, ...]
    """v_i = v^(Delta s_i) mod n^2, in the order of ``parties``."""
    theta: int
    """d mod n, public and invertible."""
    key_generation: str
    """Provenance of the shares: see :data:`KEY_GENERATIONS`."""

    def __post_init__(self) -> None:
        n2 = self.n * self.n
        if self.n < 3 or self.n % 2 == 0:
            raise MalformedInput("threshold public key: n must be an odd modulus")
        if len(set(self.parties)) != len(self.parties) or not self.parties:
            raise MalformedInput("threshold public key: parties must be distinct and non-empty")
        if not 1 <= self.quorum <= len(self.parties):
            raise MalformedInput(f"threshold public key: quorum {self.quorum} not in 1..{len(self.parties)}")
        if len(self.verification_keys) != len(self.parties):
            raise MalformedInput("threshold public key: one verification key per party expected")
        for party, key in zip(self.parties, self.verification_keys):
            if not 0 < key < n2 or math.gcd(key, self.n) != 1:
                raise MalformedInput(f"threshold public key: verification key of {party!r} is not in Z_(n^2)^*")
        if not 0 < self.theta < self.n or math.gcd(self.theta, self.n) != 1:
            raise MalformedInput("threshold public key: theta must be invertible mod n")
        if self.key_generation not in KEY_GENERATIONS:
            raise MalformedInput(f"threshold public key: unknown key generation {self.key_generation!r}")

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def delta(self) -> int:
        return math.factorial(len(self.parties))

    @property
    def base(self) -> int:
        return _verification_base_cached(self.n)

    def abscissa(self, party: str) -> int:
        try:
            return self.parties.index(party) + 1
        except ValueError:
            raise MalformedInput(f"{party!r} holds no share of this key; holders: {list(self.parties)}") from None

    @functools.cached_property
    def key_id(self) -> int:
        """SHA-256 of the canonical key record: proofs are bound to all of it (quorum,
        parties, verification keys), so a record that alters any part fails them."""
        return int.from_bytes(hashlib.sha256(rfc8785.dumps(self.to_json())).digest(), "big")

    def to_json(self) -> dict[str, Any]:
        return {
            "n": _hex(self.n),
            "parties": list(self.parties),
            "quorum": self.quorum,
            "verification_keys": [_hex(v) for v in self.verification_keys],
            "theta": _hex(self.theta),
            "key_generation": self.key_generation,
        }

    @classmethod
    def from_json(cls, data: Any) -> ThresholdPublicKey:
        if not isinstance(data, Mapping):
            raise MalformedInput("threshold public key must be a JSON object")
        parties, keys, quorum = data.get("parties"), data.get("verification_keys"), data.get("quorum")
        if not isinstance(parties, list) or not all(isinstance(p, str) for p in parties):
            raise MalformedInput("threshold public key: 'parties' must be a list of strings")
        if not isinstance(keys, list):
            raise MalformedInput("threshold public key: 'verification_keys' must be a list")
        if not isinstance(quorum, int) or isinstance(quorum, bool):
            raise MalformedInput("threshold public key: 'quorum' must be an integer")
        return cls(
            n=_parse_hex(data.get("n"), "threshold public key n"),
            parties=tuple(parties),
            quorum=quorum,
            verification_keys=tuple(_parse_hex(v, f"verification key {i}") for i, v in enumerate(keys)),
            theta=_parse_hex(data.get("theta"), "threshold public key theta"),
            key_generation=str(data.get("key_generation")),
        )


@functools.lru_cache(maxsize=16)
def _verification_base_cached(n: int) -> int:
    return verification_base(n)


@dataclass(frozen=True)
class KeyShare:
    """One party's secret share s_i of d (keep it where only that party reads)."""

    public_key: ThresholdPublicKey
    party: str
    share: int

    def __post_init__(self) -> None:
        index = self.public_key.abscissa(self.party)
        expected = self.public_key.verification_keys[index - 1]
        if gmpy2.powmod(self.public_key.base, self.public_key.delta * self.share, self.public_key.nsquare) != expected:
            raise WrongKey(f"share of {self.party!r} does not match its published verification key")

    def to_private_bytes(self) -> bytes:
        return rfc8785.dumps({"format": _SHARE_FORMAT, "party": self.party, "share": _hex(self.share),
                              "public_key": self.public_key.to_json()})

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyShare:
        try:
            record = json.loads(data)
        except (ValueError, TypeError) as exc:
            raise MalformedInput(f"threshold key share is not JSON: {exc}") from exc
        if not isinstance(record, dict) or record.get("format") != _SHARE_FORMAT:
            raise MalformedInput(f"threshold key share lacks format {_SHARE_FORMAT!r}")
        return cls(ThresholdPublicKey.from_json(record.get("public_key")), str(record.get("party")),
                   _parse_hex(record.get("share"), "threshold key share"))


def deal_shares(p: int, q: int, *, parties: Sequence[str], quorum: int) -> list[KeyShare]:
    """TRUSTED DEALER: from the factors of n, share d = 0 mod lambda, d = 1 mod n.

    Whoever runs this knows p and q and can decrypt alone until it forgets them; the
    public key records ``key_generation = "trusted-dealer"``.
    """
    if p == q or not gmpy2.is_prime(p) or not gmpy2.is_prime(q):
        raise ConfigurationError("deal_shares: p and q must be distinct primes")
    if not 1 <= quorum <= len(parties):
        raise ConfigurationError(f"quorum must be in 1..{len(parties)}, got {quorum}")
    n = p * q
    lam = math.lcm(p - 1, q - 1)
    if math.gcd(n, lam) != 1:
        raise ConfigurationError("gcd(n, lambda(n)) != 1: not a Paillier modulus")
    order = n * lam  # exponent of Z_(n^2)^*: shares live modulo it
    d = lam * int(gmpy2.invert(lam, n))  # 0 mod lambda, 1 mod n
    coefficients = [d] + [secrets.randbelow(order) for _ in range(quorum - 1)]
    shares = [sum(a * x**k for k, a in enumerate(coefficients)) % order for x in range(1, len(parties) + 1)]
    delta, n2 = math.factorial(len(parties)), n * n
    v = verification_base(n)
    public = ThresholdPublicKey(
        n=n, parties=tuple(parties), quorum=quorum,
        verification_keys=tuple(int(gmpy2.powmod(v, delta * s, n2)) for s in shares),
        theta=1, key_generation=DEALER,
    )
    return [KeyShare(public, party, share) for party, share in zip(parties, shares)]


# ---------------------------------------------------------------- partial decryption


@dataclass(frozen=True)
class PartialDecryption:
    """c_i = c^(2 Delta s_i) mod n^2 with its proof (challenge e, response z)."""

    party: str
    value: int
    challenge: int
    response: int

    def to_json(self) -> dict[str, str]:
        return {"party": self.party, "value": _hex(self.value), "challenge": _hex(self.challenge),
                "response": _hex(self.response)}

    @classmethod
    def from_json(cls, data: Any) -> PartialDecryption:
        if not isinstance(data, Mapping) or not isinstance(data.get("party"), str):
            raise MalformedInput("partial decryption must be an object with a string 'party'")
        party = data["party"]
        return cls(party, _parse_hex(data.get("value"), f"partial decryption of {party!r}"),
                   _parse_hex(data.get("challenge"), f"challenge of {party!r}"),
                   _parse_hex(data.get("response"), f"response of {party!r}"))


def _challenge(key: ThresholdPublicKey, context: bytes, index: int, ciphertext: int, value: int,
               commit_c: int, commit_v: int) -> int:
    return _hash_ints(b"bfl-private/threshold-paillier/dleq:" + context, key.key_id, key.n, key.base, index,
                      key.verification_keys[index - 1], ciphertext, value, commit_c, commit_v)


def _check_ciphertext(key: ThresholdPublicKey, ciphertext: int) -> None:
    if not isinstance(ciphertext, int) or not 0 < ciphertext < key.nsquare or math.gcd(ciphertext, key.n) != 1:
        raise MalformedInput("ciphertext is not in Z_(n^2)^*")


def partial_decrypt(share: KeyShare, ciphertext: int, *, context: bytes) -> PartialDecryption:
    """This party's partial decryption of ``ciphertext`` and its proof, bound to ``context``."""
    key = share.public_key
    _check_ciphertext(key, ciphertext)
    n2, index = key.nsquare, key.abscissa(share.party)
    exponent = key.delta * share.share
    c4 = gmpy2.powmod(ciphertext, 4, n2)
    value = int(gmpy2.powmod(ciphertext, 2 * exponent, n2))
    r = secrets.randbits(exponent.bit_length() + _HASH_BITS + _SECURITY_BITS)
    commit_c, commit_v = int(gmpy2.powmod(c4, r, n2)), int(gmpy2.powmod(key.base, r, n2))
    e = _challenge(key, context, index, ciphertext, value, commit_c, commit_v)
    return PartialDecryption(share.party, value, e, r + e * exponent)


def verify_partial(key: ThresholdPublicKey, ciphertext: int, partial: PartialDecryption, *, context: bytes) -> None:
    """Raise :class:`BadPartialDecryption` (naming the party) unless the proof verifies."""
    _check_ciphertext(key, ciphertext)
    party = partial.party
    index = key.abscissa(party)
    n2 = key.nsquare
    if not 0 < partial.value < n2 or math.gcd(partial.value, key.n) != 1:
        raise BadPartialDecryption(f"partial decryption of {party!r} is not in Z_(n^2)^*", party=party)
    if partial.challenge >= 1 << _HASH_BITS or partial.response < 0:
        raise BadPartialDecryption(f"proof of {party!r} has an out-of-range challenge or response", party=party)
    c4 = gmpy2.powmod(ciphertext, 4, n2)
    value2 = gmpy2.powmod(partial.value, 2, n2)
    e = partial.challenge
    # a = (c^4)^z (c_i^2)^-e, b = v^z v_i^-e: the commitments the prover must have hashed.
    commit_c = gmpy2.powmod(c4, partial.response, n2) * gmpy2.powmod(value2, -e, n2) % n2
    commit_v = gmpy2.powmod(key.base, partial.response, n2) * gmpy2.powmod(key.verification_keys[index - 1], -e, n2) % n2
    if _challenge(key, context, index, ciphertext, partial.value, int(commit_c), int(commit_v)) != e:
        raise BadPartialDecryption(f"partial decryption of {party!r} fails its proof of correct decryption",
                                   party=party)


def combine(key: ThresholdPublicKey, ciphertext: int, partials: Sequence[PartialDecryption], *,
            context: bytes) -> int:
    """Verify every partial, then decrypt from the first ``quorum`` (by abscissa).

    Raises :class:`BadPartialDecryption` for the first invalid one (naming its party),
    :class:`TooManyDropouts` when fewer than ``quorum`` distinct parties answered.
    """
    by_party: dict[str, PartialDecryption] = {}
    for partial in partials:
        if partial.party in by_party:
            raise MalformedInput(f"two partial decryptions from {partial.party!r}")
        verify_partial(key, ciphertext, partial, context=context)
        by_party[partial.party] = partial
    return interpolate(key, list(by_party.values()))


def interpolate(key: ThresholdPublicKey, verified: Sequence[PartialDecryption]) -> int:
    """The plaintext from the first ``quorum`` of partials (by abscissa) of distinct parties
    that have each passed :func:`verify_partial` for one ciphertext: no check of its own."""
    if len({p.party for p in verified}) < key.quorum:
        raise TooManyDropouts(f"{len(verified)} partial decryptions; decryption needs a quorum of {key.quorum}",
                              stage="decrypt", required=key.quorum, available=len(verified))
    chosen = sorted(verified, key=lambda p: key.abscissa(p.party))[: key.quorum]
    abscissas = tuple(key.abscissa(p.party) for p in chosen)
    n, n2 = key.n, key.nsquare
    combined = gmpy2.mpz(1)
    for partial, mu in zip(chosen, _lagrange_at_zero(abscissas, key.delta)):
        combined = combined * gmpy2.powmod(partial.value, 2 * mu, n2) % n2
    if (combined - 1) % n != 0:
        raise DecryptionProofError("combined partial decryptions are not of the form 1 + k n")
    scale = 4 * key.delta**2 * key.theta % n
    return int((combined - 1) // n * gmpy2.invert(scale, n) % n)


# ---------------------------------------------------------------- a round's published record


def round_context(round_id: int) -> bytes:
    """What partial decryptions of a round's aggregate are bound to."""
    return b"bfl-private/paillier-round:" + round_id.to_bytes(8, "big")


@dataclass(frozen=True)
class ThresholdDecryptionRecord:
    """What a round publishes instead of a key holder's (m, r): the threshold key, each
    answering party's partial decryptions of every aggregate ciphertext, and the parties
    whose partials were refused, with the reason."""

    public_key: ThresholdPublicKey
    partials: Mapping[str, tuple[PartialDecryption, ...]]
    refused: Mapping[str, str]

    def verify_and_combine(self, ciphertexts: Sequence[int], *, context: bytes) -> list[int]:
        """Check every published partial and decrypt each ciphertext from a quorum of them.

        Raises :class:`BadPartialDecryption` naming a party whose partial fails,
        :class:`TooManyDropouts` when fewer than a quorum of parties published.
        """
        for party, values in self.partials.items():
            if len(values) != len(ciphertexts) or any(p.party != party for p in values):
                raise MalformedInput(f"threshold record: {party!r} must publish one partial per ciphertext "
                                     f"({len(ciphertexts)}), each in its own name")
        return [combine(self.public_key, c, [values[i] for values in self.partials.values()], context=context)
                for i, c in enumerate(ciphertexts)]

    def to_json(self) -> dict[str, Any]:
        return {
            "public_key": self.public_key.to_json(),
            "partials": {party: [p.to_json() for p in values] for party, values in sorted(self.partials.items())},
            "refused": dict(sorted(self.refused.items())),
        }

    @classmethod
    def from_json(cls, data: Any) -> ThresholdDecryptionRecord:
        if not isinstance(data, Mapping):
            raise MalformedInput("threshold decryption record must be a JSON object")
        partials, refused = data.get("partials"), data.get("refused")
        if not isinstance(partials, Mapping) or not all(isinstance(v, list) for v in partials.values()):
            raise MalformedInput("threshold decryption record: 'partials' must map parties to lists")
        if not isinstance(refused, Mapping) or not all(isinstance(v, str) for v in refused.values()):
            raise MalformedInput("threshold decryption record: 'refused' must map parties to reasons")
        return cls(ThresholdPublicKey.from_json(data.get("public_key")),
                   {str(party): tuple(PartialDecryption.from_json(p) for p in values)
                    for party, values in partials.items()},
                   dict(refused))
