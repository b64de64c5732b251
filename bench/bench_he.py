"""Homomorphic aggregation throughput: packed Paillier vs one value per ciphertext, and
the CKKS protocol vs raw TenSEAL calls, every pair timed in the same process.

Paillier (2048- and 3072-bit keys, 16-bit values, headroom for 15 clients: 102 and 153
slots): the baseline
encrypts one value per ciphertext with phe's ``raw_encrypt`` on one core; the protocol
packs and encrypts a client's whole update (codec + packing + encryption + a proof of
plaintext knowledge per ciphertext, bound to round and sender + blob), on one
core and on all cores. Decryption with its proof and the auditor's verification are
reported per value against the same baseline; so are the modulus proof's cost (made once
at genesis, checked by every party) and each step at 3072 bits against 2048.

CKKS (N = 8192, (60, 40), scale 2^40): per 1e5 parameters, the protocol's client step
(clip, chunk, encrypt, blob), aggregator step (parse and check every submission, add) and
key holder step (recompute the sum from the submissions, decrypt) against the bare
TenSEAL calls doing the same work (encrypt + serialise; deserialise + add + serialise;
deserialise + add + serialise + decrypt). The target is a ratio within 1.2.

    python -m bench.bench_he [--quick]
"""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

import numpy as np
import tenseal as ts
from bfl_private.protocols import ckks, paillier
from bfl_private.protocols.quantize import FixedPointCodec

from bench import best_time


def _bench_paillier_key(bits: int, *, quick: bool) -> tuple[list[dict], dict[str, float]]:
    """Rows for one key size, and its seconds per value of each step."""
    holder = paillier.PaillierKeyHolder.generate(bits=bits)
    pk = holder.public_key
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=15)
    ciphertexts = 20 if quick else 60
    slots = (bits - 1) // 20  # 16-bit values + 4 headroom bits: 102 slots at 2048, 153 at 3072
    layout = paillier.PackingLayout.for_codec(key_bits=bits, codec=codec, length=ciphertexts * slots)
    assert layout.slots == slots
    rng = np.random.default_rng(0)
    vectors = [rng.normal(0, 0.3, layout.length) for _ in range(2)]
    single = rng.integers(0, 1 << 16, ciphertexts).tolist()
    cores = os.cpu_count() or 1

    def unpacked() -> None:
        for m in single:
            pk.raw_encrypt(m)

    def packed(workers: int) -> Callable[[], None]:
        return lambda: paillier.encrypt_update(vectors[0], public_key=pk, codec=codec, layout=layout, round_id=1,
                                               client="c0", workers=workers)

    timings: dict[str, list[float]] = {"unpacked": [], "packed_1": [], "packed_n": []}
    for _ in range(3 if quick else 5):  # interleaved, so all three see the same load
        timings["unpacked"].append(best_time(unpacked, 1) / len(single))  # seconds per value
        timings["packed_1"].append(best_time(packed(1), 1) / layout.length)
        timings["packed_n"].append(best_time(packed(cores), 1) / layout.length)
    t_unpacked, t_packed_1, t_packed_n = (min(timings[k]) for k in ("unpacked", "packed_1", "packed_n"))
    blobs = {f"c{i}": paillier.encrypt_update(v, public_key=pk, codec=codec, layout=layout, round_id=1, client=f"c{i}")
             for i, v in enumerate(vectors)}
    started = time.perf_counter()
    decryption = holder.decrypt_aggregate(blobs, layout=layout, round_id=1)
    t_decrypt = (time.perf_counter() - started) / layout.length
    started = time.perf_counter()
    for c, m, r in zip(decryption.aggregate, decryption.plaintexts, decryption.proofs):
        paillier.verify_decryption(pk, c, m, r)
    t_verify = (time.perf_counter() - started) / layout.length
    started = time.perf_counter()
    published = holder.publish()
    t_prove = time.perf_counter() - started
    started = time.perf_counter()
    paillier.PublishedKey.from_json(published.to_json(), key_bits=bits)
    t_check = time.perf_counter() - started
    base = {"suite": "he", "scheme": f"paillier-{bits}", "baseline": "unpacked raw_encrypt, 1 core",
            "baseline_values_per_s": 1 / t_unpacked}
    rows = [
        {**base, "name": "packed encrypt, 1 core", "values_per_s": 1 / t_packed_1, "ratio": t_unpacked / t_packed_1},
        {**base, "name": f"packed encrypt, {cores} cores", "values_per_s": 1 / t_packed_n,
         "ratio": t_unpacked / t_packed_n},
        {**base, "name": "key holder: recompute sum of 2, decrypt, prove", "values_per_s": 1 / t_decrypt,
         "ratio": t_unpacked / t_decrypt},
        {**base, "name": "auditor: verify_decryption", "values_per_s": 1 / t_verify, "ratio": t_unpacked / t_verify},
        {"suite": "he", "scheme": f"paillier-{bits}", "name": "genesis: prove the modulus (GRSB, 7 roots)",
         "seconds": t_prove},
        {"suite": "he", "scheme": f"paillier-{bits}", "name": "everyone: check the modulus proof", "seconds": t_check},
    ]
    return rows, {"encrypt": t_packed_1, "decrypt": t_decrypt, "verify": t_verify}


def bench_paillier(*, quick: bool) -> list[dict]:
    """Both key sizes a federation may choose, and what 3072 bits (the default, 128-bit
    security) costs per value against 2048 (about 112-bit), measured in this process."""
    rows_2048, per_value_2048 = _bench_paillier_key(2048, quick=quick)
    rows_3072, per_value_3072 = _bench_paillier_key(3072, quick=quick)
    comparison = [
        {"suite": "he", "scheme": "paillier-3072", "name": f"{step} per value, 3072 against 2048 bits",
         "seconds_per_value": per_value_3072[step], "baseline": "the same step at 2048 bits",
         "baseline_seconds_per_value": per_value_2048[step], "ratio": per_value_2048[step] / per_value_3072[step]}
        for step in ("encrypt", "decrypt", "verify")
    ]
    return [*rows_2048, *rows_3072, *comparison]


def bench_ckks(*, quick: bool) -> list[dict]:
    holder = ckks.CkksKeyHolder.generate()
    public_bytes = holder.public_context
    public = ckks.load_public_context(public_bytes)
    # The raw calls get their own TenSEAL context with the same parameters.
    secret = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40])
    secret.global_scale = 2.0**40
    raw_public = secret.copy()
    raw_public.make_context_public()
    length, clients = (20_000, 2) if quick else (100_000, 4)
    protocol = ckks.CkksProtocol(public_context=public_bytes, key_holder=holder, clip=1.0, max_summands=clients)
    rng = np.random.default_rng(1)
    vectors = [np.clip(rng.normal(0, 0.3, length), -1, 1) for _ in range(clients)]
    sizes = ckks.chunk_lengths(length, protocol.parameters)
    bounds = np.cumsum([0] + sizes)
    repeats = 7 if quick else 9

    def raw_encrypt(v: np.ndarray) -> list[bytes]:
        return [ts.ckks_vector(raw_public, v[a:b]).serialize() for a, b in itertools.pairwise(bounds)]

    def raw_sum(chunk_lists: list[list[bytes]], context: ts.Context) -> list[ts.CKKSVector]:
        totals = [ts.ckks_vector_from(context, c) for c in chunk_lists[0]]
        for chunks in chunk_lists[1:]:
            totals = [total + ts.ckks_vector_from(context, c) for total, c in zip(totals, chunks)]
        return totals

    raw_chunks = [raw_encrypt(v) for v in vectors]
    blobs = {f"c{i}": ckks.encrypt_update(v, context=public, public_context=public_bytes, clip=1.0)
             for i, v in enumerate(vectors)}

    def ours_add() -> None:
        ckks.add([ckks.decode_submission(b, context=public, public_context=public_bytes, length=length, client=c)
                  for c, b in sorted(blobs.items())])

    def raw_decrypt() -> None:
        for total in raw_sum(raw_chunks, secret):
            total.serialize()  # the key holder serialises the sum it recomputed, to commit to it
            total.decrypt()

    pairs = {
        "encrypt (1 client)": (lambda: raw_encrypt(vectors[0]),
                               lambda: ckks.encrypt_update(vectors[0], context=public, public_context=public_bytes,
                                                           clip=1.0)),
        f"add ({clients} clients)": (lambda: [t.serialize() for t in raw_sum(raw_chunks, raw_public)], ours_add),
        f"decrypt (sum of {clients})": (raw_decrypt, lambda: holder.decrypt_aggregate(blobs, length=length,
                                                                                      max_summands=clients)),
    }
    per = 1e5 / length
    rows = []
    for name, (raw, ours) in pairs.items():
        raw_times, our_times = [], []
        for _ in range(repeats):  # interleaved, so both see the same load
            raw_times.append(best_time(raw, 1))
            our_times.append(best_time(ours, 1))
        t_raw, t_ours = min(raw_times), min(our_times)
        rows.append({"suite": "he", "scheme": "ckks-8192", "name": name, "baseline": "raw TenSEAL calls",
                     "seconds_per_1e5": t_ours * per, "baseline_seconds_per_1e5": t_raw * per,
                     "ratio": t_ours / t_raw})
    rows.append({"suite": "he", "scheme": "ckks-8192", "name": "submission bytes per parameter",
                 "baseline": "raw serialised ciphertexts", "bytes_per_param": len(blobs["c0"]) / length,
                 "ratio": len(blobs["c0"]) / sum(len(c) for c in raw_chunks[0])})
    return rows


def run(*, quick: bool) -> list[dict]:
    return bench_paillier(quick=quick) + bench_ckks(quick=quick)


def _markdown(rows: list[dict]) -> str:
    lines = ["| scheme | measure | figure | baseline | ratio |", "|---|---|---|---|---|"]
    for row in rows:
        if "values_per_s" in row:
            figure = f"{row['values_per_s']:,.0f} values/s"
            baseline = f"{row['baseline']}: {row['baseline_values_per_s']:,.0f} values/s"
        elif "seconds_per_1e5" in row:
            figure = f"{row['seconds_per_1e5']:.4f} s per 1e5 params"
            baseline = f"{row['baseline']}: {row['baseline_seconds_per_1e5']:.4f} s"
        else:
            figure = f"{row['bytes_per_param']:.2f} bytes/param"
            baseline = row["baseline"]
        lines.append(f"| {row['scheme']} | {row['name']} | {figure} | {baseline} | {row['ratio']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(_markdown(run(quick="--quick" in sys.argv)))
