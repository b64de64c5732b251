"""Per-round Paillier decryption cost: a quorum of validators vs the single key holder.

Both sides decrypt the same sum of 10 clients' packed submissions (16-bit values,
headroom for 15), timed in the same process:

* baseline, the single key holder: recompute the sum from the submissions, decrypt
  every aggregate ciphertext and recover its randomness r (the proof); then the
  auditor's check, re-encrypting every (m, r).
* threshold, 3 of 4 validators (the federation's 2f+1 of 3f+1): each of the quorum
  recomputes the sum and publishes its partial decryptions with one batched proof, the
  aggregator verifies every proof and combines; then the auditor re-verifies every
  proof and re-combines. The dealer's key generation is not timed (once per federation).

Workloads: the default federation's update (logistic regression on breast cancer: 31
parameters + the weight, one ciphertext) and a 10^4-value update (99 ciphertexts at
2048 bits, 66 at 3072; quick mode: 1020 values at 1024 bits, a test size only). Sizes:
2048 and 3072 bits (the default) in the full run.

    python -m bench.bench_threshold [--quick]
"""
from __future__ import annotations

import sys
import time

import numpy as np
from bfl_private.protocols import paillier
from bfl_private.protocols.paillier_committee import ShareHolder, ValidatorCommittee
from bfl_private.protocols.quantize import FixedPointCodec
from bfl_private.protocols.threshold_paillier import deal_shares, round_context, safe_prime_pair
from phe.paillier import PaillierPrivateKey, PaillierPublicKey

from bench import best_time

CLIENTS = 10
VALIDATORS = [f"validator-{i}" for i in range(4)]
QUORUM = 3


def _round_cost(bits: int, length: int, *, repeats: int) -> dict:
    p, q = safe_prime_pair(bits)  # one modulus for both sides
    holder = paillier.PaillierKeyHolder(PaillierPrivateKey(PaillierPublicKey(p * q), p, q))
    shares = deal_shares(p, q, parties=VALIDATORS, quorum=QUORUM)
    committee = ValidatorCommittee(shares[0].public_key, [ShareHolder(s) for s in shares])
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=15)
    layout = paillier.PackingLayout.for_codec(key_bits=bits, codec=codec, length=length)
    rng = np.random.default_rng(0)
    blobs = {f"client-{i}": paillier.encrypt_update(rng.normal(0, 0.3, length), public_key=holder.public_key,
                                                    codec=codec, layout=layout, round_id=1, client=f"client-{i}",
                                                    rng=rng)
             for i in range(CLIENTS)}

    def single() -> None:
        decryption = holder.decrypt_aggregate(blobs, layout=layout, round_id=1)
        for c, m, r in zip(decryption.aggregate, decryption.plaintexts, decryption.proofs):
            paillier.verify_decryption(holder.public_key, c, m, r)

    def threshold() -> None:
        decryption = committee.decrypt_aggregate(blobs, layout=layout, round_id=1)
        assert decryption.record.verify_and_combine(decryption.aggregate, context=round_context(1)) \
            == list(decryption.plaintexts)

    reference = holder.decrypt_aggregate(blobs, layout=layout, round_id=1).plaintexts
    assert committee.decrypt_aggregate(blobs, layout=layout, round_id=1).plaintexts == reference
    t_single, t_threshold = [], []
    for _ in range(repeats):  # interleaved, so both see the same load
        t_single.append(best_time(single, 1))
        t_threshold.append(best_time(threshold, 1))
    started = time.perf_counter()
    decryption = committee.decrypt_aggregate(blobs, layout=layout, round_id=1)
    t_committee = time.perf_counter() - started
    started = time.perf_counter()
    decryption.record.verify_and_combine(decryption.aggregate, context=round_context(1))
    t_audit = time.perf_counter() - started
    best_single, best_threshold = min(t_single), min(t_threshold)
    return {
        "suite": "threshold", "name": f"paillier-{bits}: {QUORUM} of {len(VALIDATORS)} validators, "
                                      f"{length} values ({layout.ciphertexts} ciphertexts), sum of {CLIENTS}",
        "round_decrypt_and_audit_s": best_threshold, "committee_s": t_committee, "audit_s": t_audit,
        "baseline": "single key holder: recompute, decrypt, prove r; auditor re-encrypts",
        "baseline_round_decrypt_and_audit_s": best_single,
        "ratio": best_threshold / best_single,
    }


def run(*, quick: bool) -> list[dict]:
    if quick:  # CI: the default update and 10 ciphertexts, at 1024 bits (safe primes of 512 bits
        # take well under a second; at 2048 bits the dealer alone took most of a minute in CI)
        workloads = [(1024, 32), (1024, 1020)]
    else:
        workloads = [(2048, 32), (2048, 10_000), (3072, 32), (3072, 10_000)]
    return [_round_cost(bits, length, repeats=2 if quick else 3) for bits, length in workloads]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
