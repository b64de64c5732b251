"""Proof that a Paillier ciphertext's sender knows its plaintext, bound to round and sender.

A Paillier submission is valid under the federation's key forever, and submissions are
public blobs: without a binding, a client could resubmit another hospital's ciphertext from
an earlier round (or a re-randomisation of it, c * t^n) in a round where only colluders
remain, and the decrypted "sum" would be that hospital's update. Each ciphertext therefore
carries a non-interactive proof of knowledge of its opening (m, r), c = (1 + n)^m r^n mod n^2,
whose Fiat-Shamir challenge hashes a context naming the round, the sender and the key:
a replayed or re-randomised ciphertext cannot carry a valid proof for another context
without its plaintext.

Sigma protocol (the standard one for Paillier, e.g. Damgård and Jurik 2001, "proof of
knowledge of a plaintext"): the prover picks x in Z_n and s in Z_n^*, sends
a = (1 + n)^x s^n mod n^2; with challenge e (CHALLENGE_BITS bits, below every prime factor
of n), it answers z = x + e m mod n and w = s r^e mod n (the carry (1 + n)^(n k) of reducing
x + e m mod n is 1 mod n^2, and w^n mod n^2 depends only on w mod n). The verifier checks
(1 + n)^z w^n = a c^e mod n^2. Special soundness: two answers to different challenges for
one a give m (e1 - e2 is invertible mod n), so a prover that answers with probability well
above 2^-128 knows m. Honest-verifier zero knowledge: (a, z, w) is simulated from (e, z, w).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import gmpy2
from phe.paillier import PaillierPublicKey

from .errors import MalformedInput

CHALLENGE_BITS = 128
_DOMAIN = b"bfl-private/paillier-plaintext-proof/v1"


class PlaintextProofError(MalformedInput):
    """A ciphertext whose proof of plaintext knowledge is missing or does not verify."""


@dataclass(frozen=True)
class PlaintextProof:
    commitment: int
    """a = (1 + n)^x s^n mod n^2"""
    z: int
    w: int


def submission_context(*, round_id: int, client: str, key_fingerprint: bytes) -> bytes:
    """What a submission's proofs are bound to: the round, the sender and the key."""
    name = client.encode("utf-8")
    return round_id.to_bytes(8, "big") + len(name).to_bytes(2, "big") + name + key_fingerprint


def _challenge(n: int, ciphertext: int, commitment: int, context: bytes, index: int) -> int:
    size = (2 * n.bit_length() + 7) // 8
    digest = hashlib.sha256(_DOMAIN + len(context).to_bytes(4, "big") + context + index.to_bytes(4, "big")
                            + ciphertext.to_bytes(size, "big") + commitment.to_bytes(size, "big")).digest()
    return int.from_bytes(digest[: CHALLENGE_BITS // 8], "big")


def encrypt_with_proof(public_key: PaillierPublicKey, plaintext: int, *, context: bytes,
                       index: int) -> tuple[int, PlaintextProof]:
    """Encrypt ``plaintext`` in [0, n) with fresh OS randomness and prove knowledge of it."""
    n, n2 = public_key.n, public_key.nsquare
    if not 0 <= plaintext < n:
        raise MalformedInput("plaintext is not in [0, n)")
    r = _unit(n)
    ciphertext = int((1 + plaintext * n) * gmpy2.powmod(r, n, n2) % n2)
    x, s = secrets.randbelow(n), _unit(n)
    commitment = int((1 + x * n) * gmpy2.powmod(s, n, n2) % n2)
    e = _challenge(n, ciphertext, commitment, context, index)
    z = (x + e * plaintext) % n
    w = int(s * gmpy2.powmod(r, e, n) % n)
    return ciphertext, PlaintextProof(commitment, z, w)


def _unit(n: int) -> int:
    while True:
        value = secrets.randbelow(n - 1) + 1
        if gmpy2.gcd(value, n) == 1:
            return value


def verify_plaintext_proof(public_key: PaillierPublicKey, ciphertext: int, proof: PlaintextProof, *,
                           context: bytes, index: int) -> None:
    """Check (1 + n)^z w^n = a c^e mod n^2 for the challenge of this context; raises PlaintextProofError."""
    n, n2 = public_key.n, public_key.nsquare
    if not (0 < proof.commitment < n2 and 0 <= proof.z < n and 0 < proof.w < n) \
            or gmpy2.gcd(proof.commitment, n) != 1 or gmpy2.gcd(proof.w, n) != 1:
        raise PlaintextProofError(f"ciphertext {index}: proof values out of range")
    e = _challenge(n, ciphertext, proof.commitment, context, index)
    left = (1 + proof.z * n) * gmpy2.powmod(proof.w, n, n2) % n2
    right = proof.commitment * gmpy2.powmod(ciphertext, e, n2) % n2
    if left != right:
        raise PlaintextProofError(f"ciphertext {index}: the proof of plaintext knowledge does not verify for this "
                                  "round and sender (a replayed or re-randomised ciphertext cannot carry one)")
