"""Write one frozen set of known-answer files for bfl-private's own formats. Run by hand only.

    .venv/bin/python tests/vectors/known_answers/make.py VERSION [--deterministic-only]

writes ``tests/vectors/known_answers/VERSION/`` (it refuses an existing directory: a frozen
set is never rewritten; a format change adds a new VERSION beside the old ones, and the
tests keep checking every set). The test suite never runs this script; it reads the files
through ``tests/known_answer_vectors.py`` (``tests/test_known_answers.py``).

What is written, and how reproducible it is:

* ``entries.json`` (deterministic): one ledger entry of each type (genesis, round_open,
  submission, round_close, attestation, abort) signed with Ed25519 keys derived from fixed
  seeds (RFC 8032 signatures are deterministic), their canonical bytes (hex), leaf hashes,
  signed bytes, the signers' verifier keys and seeds; one block header of those entries
  with a validator's cosignature and its certificate note; the CIDs of two fixed blobs.
* ``masking_messages.json`` (deterministic): every masking message kind (key advertisement,
  share bundle, share delivery, masked input, survivor set, acknowledgement, signature
  list, unmask response) between three clients whose X25519 / Ed25519 keys, self-mask
  seeds, Shamir polynomials and AES-GCM nonces come from fixed seeds; the bytes (hex),
  the decoded fields, and the derived values (pairwise mask seeds, share keys, commitments,
  PRG output) the messages were built from.
* ``privacy_records.json`` (deterministic for a given dp-accounting version, which the file
  names): PrivacyRecord and SkellamRecord histories with their recomputed ε.
* ``transcripts/`` (snapshot: protocol randomness comes from the OS CSPRNG): a masking round
  with a client dropped after sharing (so revealed mask keys are exercised) and a Paillier
  round under a 1024-bit single key holder (decryption proofs), each with its submissions
  and the decoded total (float64, hex) that ``recompute_total`` must give.
* ``ledgers/<name>/`` (snapshot: a real federation made by ``bfl_private.runner.run_command``
  today; only ``ledger.sqlite3`` and ``blobs/``, what an auditor gets, never ``keys/``) and
  ``ledgers.json`` with each one's head, genesis fingerprint, checkpoint note, audit
  summary and the transcripts of its rounds (CIDs and decoded totals).
* ``about.json``: the commit and library versions the set was made with.

``--deterministic-only`` writes only the deterministic files: run it into a scratch VERSION
and ``diff -r`` against a committed set to check that regenerating gives identical bytes.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from bfl_private.ledger.blocks import GENESIS_PREV, BlockHeader, certificate_note, origin_for
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import (
    ABORT,
    ATTESTATION,
    GENESIS,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
)
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.merkle import root_from_leaf_hashes
from bfl_private.privacy.accounting import PrivacyRecord, SkellamRecord, recorded_epsilon
from bfl_private.protocols import keyagreement as ka
from bfl_private.protocols import shamir
from bfl_private.protocols.masking_messages import (
    SERVER,
    Acknowledgements,
    KeyAdvertisement,
    MaskedInput,
    SealedShares,
    SurvivorSet,
    UnmaskResponse,
    commitment_payload,
    self_mask_commitment,
    share_associated_data,
    survivor_payload,
)
from bfl_private.protocols.prg import SEED_BYTES, expand
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def seed(label: str, size: int = 32) -> bytes:
    """A fixed secret for the known answers: SHA-256 of a label (never use outside tests)."""
    return hashlib.sha256(b"bfl-private/known-answers/v1/" + label.encode()).digest()[:size]


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# --- ledger entries ------------------------------------------------------------------------


def identity(name: str) -> SigningIdentity:
    return SigningIdentity.from_private_bytes(name, seed(f"ed25519/{name}"))


def make_entries() -> dict[str, Any]:
    coordinator, hospitals = identity("coordinator"), [identity(f"hospital-0{i}") for i in range(2)]
    validator = identity("validator-0")
    model = b"known-answer model v1"
    model_cid, update_cid = cid_for(model), cid_for(b"known-answer update v1")
    next_cid, transcript_cid = cid_for(b"known-answer model v1 round 1"), cid_for(b"{}")
    privacy = {  # a local DP-SGD record as a submission carries it (opaque to the entry schema)
        "accountant": "pld", "clipping_norm": 1, "delta": 1e-05, "library": "dp-accounting",
        "library_version": "0.6.0", "mechanism": "subsampled_gaussian", "neighboring_relation": "zero_out",
        "noise_multiplier": 1.2345678901234567, "sample_rate": 0.015625, "steps": 64,
        "value_discretization_interval": 0.001,
    }
    specs = [
        ("genesis", coordinator, GENESIS, 0, {
            "federation_id": "kat-federation",
            "settings": {"dataset": "synthetic", "protocol": {"name": "masking", "neighbours": None},
                         "note": "Zürich — café ✓ \"quoted\" \\ tab\t", "weights": [0.1, -2.5e-07, 1e21, 123456789.125]},
            "quorum": 1,
            "rewards": {"reward_per_round": 100, "penalty_invalid": 50, "penalty_dropout": 10, "validator_reward": 5},
            "coordinator": {"id": "coordinator", "vkey": coordinator.public.vkey()},
            "clients": [{"id": h.name, "vkey": h.public.vkey(), "epsilon_budget": 8.0, "delta": 1e-05,
                         "data_weight": 120 + i} for i, h in enumerate(hospitals)],
            "validators": [{"id": validator.name, "vkey": validator.public.vkey()}],
            "initial_model_cid": model_cid,
            "normalisation": {"source": "public reference table", "records": 1000, "mean": [0.5, -1.25, 3e-10],
                              "scale": [1, 0.333, 12.5]},
        }),
        ("round_open", coordinator, ROUND_OPEN, 1, {
            "participants": [h.name for h in hospitals], "protocol": "masking",
            "protocol_params": {"codec": {"bits": 16, "clip": 0.5, "max_summands": 8}, "neighbours": None},
            "base_model_cid": model_cid, "privacy_plan": {"epsilon": 1.0, "rounds": 1},
        }),
        ("submission", hospitals[0], SUBMISSION, 1, {
            "client": "hospital-00", "blob_cid": update_cid, "data_weight": 120, "privacy": privacy,
        }),
        ("round_close", coordinator, ROUND_CLOSE, 1, {
            "aggregate_cid": update_cid, "new_model_cid": next_cid, "transcript_cid": transcript_cid,
            "survivors": ["hospital-00"], "dropouts": [], "rejected": {"hospital-01": "malformed submission"},
            "cumulative_epsilon": {"hospital-00": 0.6862945200302173, "hospital-01": 0},
        }),
        ("attestation", validator, ATTESTATION, 1, {
            "validator": "validator-0", "model_cid": next_cid, "quality_ppm": 909091, "verdict": "accept",
        }),
        ("abort", coordinator, ABORT, 2, {
            "stage": "unmask", "reason": "3 dropouts exceed the collusion threshold t = 2",
            "survivors": ["hospital-00"], "cumulative_epsilon": {"hospital-00": 0.9997532445594923},
        }),
    ]
    entries = []
    for name, signer, entry_type, round_, payload in specs:
        entry = Entry.create(signer, entry_type, round_, payload)
        entries.append({
            "name": name, "type": entry_type, "round": round_, "author": entry.author, "signer": signer.name,
            "payload": entry.payload, "sig": base64.b64encode(entry.signature).decode(),
            "bytes_hex": entry.to_bytes().hex(), "signed_bytes_hex": entry.signed_bytes().hex(),
            "leaf_hash": entry.leaf_hash().hex(),
        })
    leaves = [bytes.fromhex(e["leaf_hash"]) for e in entries]
    header = BlockHeader(origin=origin_for("kat-federation"), height=1, size=len(leaves),
                         root=root_from_leaf_hashes(leaves), prev_hash=GENESIS_PREV,
                         state_root=hashlib.sha256(b"known-answer state").digest(), time=1_700_000_000)
    cosignature = validator.sign(header.signing_bytes())
    keys = [coordinator, *hospitals, validator]
    return {
        "comment": "Deterministic: Ed25519 keys from fixed seeds (seed_hex), RFC 8032 signatures. "
                   "Made by tests/vectors/known_answers/make.py.",
        "identities": {k.name: {"seed_hex": k.private_bytes().hex(), "vkey": k.public.vkey(),
                                "key_id": k.public.key_id_hex} for k in keys},
        "entries": entries,
        "block": {
            "header_hex": header.signing_bytes().hex(), "hash": header.hash().hex(),
            "root": header.root.hex(), "size": header.size, "height": header.height, "time": header.time,
            "cosigner": validator.name, "cosignature": cosignature.hex(),
            "certificate_note": certificate_note(header, {validator.public.key_id_hex: cosignature},
                                                 {validator.public.key_id_hex: validator.public}),
        },
        "cids": [{"data_hex": data.hex(), "cid": cid_for(data)} for data in (model, b"{}", b"")],
    }


# --- masking messages ----------------------------------------------------------------------


def _hex_items(items: Any) -> list[list[Any]]:
    return [[i, bytes(b).hex()] for i, b in items]


def make_masking_messages() -> dict[str, Any]:
    round_id, clients, threshold, length = 7, (0, 1, 2), 2, 5
    ident = {c: Ed25519PrivateKey.from_private_bytes(seed(f"masking/identity/{c}")) for c in clients}
    cipher = {c: X25519PrivateKey.from_private_bytes(seed(f"masking/cipher/{c}")) for c in clients}
    mask = {c: X25519PrivateKey.from_private_bytes(seed(f"masking/mask/{c}")) for c in clients}
    self_seed = {c: seed(f"masking/self-mask/{c}", SEED_BYTES) for c in clients}
    inputs = {c: [(1000 * c + 17 * j) % 65536 for j in range(length)] for c in clients}

    def poly(secret: bytes, label: str) -> dict[int, int]:
        """Shamir shares (threshold 2, abscissa = party + 1) with a fixed coefficient."""
        a1 = int.from_bytes(seed(label), "big") % shamir.PRIME
        return {p + 1: (int.from_bytes(secret, "big") + a1 * (p + 1)) % shamir.PRIME for p in clients}

    messages: list[dict[str, Any]] = []
    derived: dict[str, Any] = {"mask_seeds": {}, "share_keys": {}, "commitments": {}, "shares": {}}
    adverts = {}
    for c in clients:
        unsigned = KeyAdvertisement(round_id, c, ka.public_bytes(cipher[c]), ka.public_bytes(mask[c]), b"")
        adverts[c] = KeyAdvertisement(round_id, c, unsigned.cipher_key, unsigned.mask_key,
                                      ka.sign(ident[c], unsigned.signed_bytes()))
    sealed: dict[tuple[int, int], bytes] = {}
    bundles = {}
    for c in clients:
        b_shares = poly(self_seed[c], f"masking/poly/b/{c}")
        s_shares = poly(ka.private_bytes(mask[c]), f"masking/poly/s/{c}")
        derived["shares"][str(c)] = {"self_mask_seed": self_seed[c].hex(),
                                     "mask_private_key": ka.private_bytes(mask[c]).hex(),
                                     "b_shares": {str(x): v for x, v in b_shares.items()},
                                     "s_shares": {str(x): v for x, v in s_shares.items()}}
        items = []
        for peer in clients:
            if peer == c:
                continue
            shared = ka.agree(cipher[c], adverts[peer].cipher_key, what="known answer")
            key = ka.share_key(shared, round_id=round_id, sender=c, receiver=peer)
            derived["share_keys"][f"{c}->{peer}"] = key.hex()
            plaintext = (struct.pack(">II", c, peer) + shamir.encode_share(b_shares[peer + 1])
                         + shamir.encode_share(s_shares[peer + 1]))
            nonce = seed(f"masking/nonce/{c}->{peer}", ka.NONCE_BYTES)
            sealed[(c, peer)] = nonce + AESGCM(key).encrypt(nonce, plaintext,
                                                            share_associated_data(round_id, c, peer))
            items.append((peer, sealed[(c, peer)]))
        commitment = self_mask_commitment(round_id, c, self_seed[c])
        derived["commitments"][str(c)] = commitment.hex()
        bundles[c] = SealedShares(SealedShares.BUNDLE, round_id, c, tuple(items), commitment,
                                  ka.sign(ident[c], commitment_payload(round_id, c, commitment)))
    for a in clients:
        for b in clients:
            if a < b:
                derived["mask_seeds"][f"{a}-{b}"] = ka.mask_seed(mask[a], ka.public_bytes(mask[b]),
                                                                 round_id=round_id, a=a, b=b).hex()
    delivery = SealedShares(SealedShares.DELIVERY, round_id, 1, tuple((s, sealed[(s, 1)]) for s in (0, 2)))
    masked = {}
    for c in clients:
        vector = np.array(inputs[c], dtype=np.uint32)
        vector += expand(self_seed[c], length)
        for peer in clients:
            if peer != c:
                pair = bytes.fromhex(derived["mask_seeds"][f"{min(c, peer)}-{max(c, peer)}"])
                if peer > c:
                    vector += expand(pair, length)
                else:
                    vector -= expand(pair, length)
        masked[c] = MaskedInput(round_id, c, vector)
    survivors = SurvivorSet(round_id, clients)
    acks = {c: ka.sign(ident[c], survivor_payload(round_id, clients)) for c in clients}
    single = Acknowledgements(Acknowledgements.SINGLE, round_id, 1, ((1, acks[1]),))
    signature_list = Acknowledgements(Acknowledgements.LIST, round_id, SERVER, tuple(sorted(acks.items())))
    shares1 = derived["shares"]
    unmask = UnmaskResponse(round_id, 1, ((0, shamir.encode_share(shares1["0"]["b_shares"]["2"])),),
                            ((2, shamir.encode_share(shares1["2"]["s_shares"]["2"])),))

    def add(name: str, message: Any, kind: int, fields: dict[str, Any]) -> None:
        messages.append({"name": name, "kind": kind, "hex": message.to_bytes().hex(), "fields": fields})

    for c in clients:
        a = adverts[c]
        add(f"key_advertisement_{c}", a, 1, {"round_id": round_id, "sender": c, "cipher_key": a.cipher_key.hex(),
                                             "mask_key": a.mask_key.hex(), "signature": a.signature.hex()})
    for c in clients:
        b = bundles[c]
        add(f"share_bundle_{c}", b, 2, {"round_id": round_id, "party": c, "items": _hex_items(b.items),
                                        "commitment": b.commitment.hex(), "signature": b.signature.hex()})
    add("share_delivery_1", delivery, 3, {"round_id": round_id, "party": 1, "items": _hex_items(delivery.items),
                                          "commitment": "", "signature": ""})
    for c in clients:
        add(f"masked_input_{c}", masked[c], 4, {"round_id": round_id, "sender": c,
                                                "vector": [int(v) for v in masked[c].vector]})
    add("survivor_set", survivors, 5, {"round_id": round_id, "survivors": list(clients)})
    add("acknowledgement_1", single, 6, {"round_id": round_id, "party": 1, "signatures": _hex_items(single.signatures)})
    add("signature_list", signature_list, 7, {"round_id": round_id, "party": SERVER,
                                              "signatures": _hex_items(signature_list.signatures)})
    add("unmask_response_1", unmask, 8, {"round_id": round_id, "sender": 1,
                                         "self_mask_shares": _hex_items(unmask.self_mask_shares),
                                         "mask_key_shares": _hex_items(unmask.mask_key_shares)})
    derived["prg"] = {"seed": self_seed[0].hex(), "words": [int(v) for v in expand(self_seed[0], 8)]}
    derived["sum_of_inputs"] = [int(v) for v in np.sum([np.array(inputs[c], dtype=np.uint32) for c in clients],
                                                      axis=0, dtype=np.uint32)]
    return {
        "comment": "Deterministic: every key, seed, Shamir coefficient and AES-GCM nonce is SHA-256 of a fixed "
                   "label. Made by tests/vectors/known_answers/make.py.",
        "round_id": round_id, "threshold": threshold, "length": length,
        "identity_keys": {str(c): ka.public_bytes(ident[c]).hex() for c in clients},
        "inputs": {str(c): inputs[c] for c in clients},
        "derived": derived,
        "messages": messages,
    }


# --- privacy records -----------------------------------------------------------------------


def make_privacy_records() -> dict[str, Any]:
    pld = {"noise_multiplier": 1.2345678901234567, "sample_rate": 0.015625, "steps": 64, "clipping_norm": 1.0}
    histories = {
        "pld_one_round": [PrivacyRecord(**pld)],
        "pld_three_rounds_two_mechanisms": [PrivacyRecord(**pld), PrivacyRecord(**pld),
                                            PrivacyRecord(**{**pld, "noise_multiplier": 0.9, "steps": 30})],
        "pld_replace_one_fine_grid": [PrivacyRecord(**pld, neighboring_relation="replace_one",
                                                    value_discretization_interval=1e-4)],
        "rdp_delta_1e-6": [PrivacyRecord(**pld, accountant="rdp", delta=1e-6),
                           PrivacyRecord(**{**pld, "sample_rate": 0.05, "steps": 10}, accountant="rdp", delta=1e-6)],
    }
    skellam = {"scale": 1048576.0, "clipping_norm": 1.0, "beta": 0.6065306597126334, "sample_rate": 1.0,
                   "share_variance": 18001759105214.758, "participants": 4, "collusion_threshold": 2, "dimension": 31}
    histories["skellam_one_round"] = [SkellamRecord(**skellam)]
    histories["skellam_two_rounds_subsampled"] = [
        SkellamRecord(**skellam),
        SkellamRecord(**{**skellam, "sample_rate": 0.25, "participants": 10, "collusion_threshold": 3,
                         "dimension": 1000, "share_variance": 2.5e12}),
    ]
    return {
        "comment": "ε recomputed with bfl_private.privacy.accounting.recorded_epsilon (dp-accounting "
                   f"{metadata.version('dp-accounting')}). Made by tests/vectors/known_answers/make.py.",
        "histories": [{"name": name, "records": [r.to_json() for r in records],
                       "epsilon": recorded_epsilon(records)} for name, records in histories.items()],
    }


# --- snapshot transcripts ------------------------------------------------------------------


def _transcript_file(result: Any) -> dict[str, Any]:
    return {
        "protocol": result.protocol,
        "transcript": json.loads(json.dumps(result.transcript)),
        "submissions": {c: base64.b64encode(bytes(b)).decode() for c, b in sorted(result.submissions.items())},
        "included": list(result.included), "dropped": list(result.dropped),
        "total_float64_hex": np.asarray(result.total, dtype="<f8").tobytes().hex(),
        "total": [float(v) for v in result.total],
    }


def make_transcripts(out: Path) -> None:
    from bfl_private.protocols.base import recompute_total
    from bfl_private.protocols.masking import MaskingProtocol
    from bfl_private.protocols.paillier import PaillierKeyHolder, PaillierProtocol
    from bfl_private.protocols.quantize import FixedPointCodec

    rng = np.random.default_rng(2024)
    updates = {f"c{i}": rng.uniform(-0.6, 0.6, 6) for i in range(5)}
    codec = FixedPointCodec(clip=0.5, bits=16, max_summands=8)
    masking = MaskingProtocol(codec).aggregate(updates, round_id=3, round_seed=seed("transcripts/masking"),
                                               drop={"c4": "mask"}, rng=np.random.default_rng(1))
    assert masking.dropped == ("c4",) and masking.transcript["dropped_mask_keys"]
    holder = PaillierKeyHolder.generate(bits=1024)
    paillier = PaillierProtocol(public_key=holder.public_key, key_holder=holder, codec=codec).aggregate(
        {c: updates[c] for c in ("c0", "c1", "c2")}, round_id=4, round_seed=seed("transcripts/paillier"),
        rng=np.random.default_rng(2))
    for name, result in (("masking-dropout", masking), ("paillier-1024", paillier)):
        recomputed = recompute_total(result.protocol, result.transcript, result.submissions)
        assert np.array_equal(recomputed, result.total)
        write_json(out / "transcripts" / f"{name}.json", _transcript_file(result))


# --- ledgers -------------------------------------------------------------------------------

LEDGERS = {
    "masking-distributed": {"epsilon": 1.0, "rounds": 2, "clients": 4, "seed": 1, "protocol": "masking"},
    "masking-local": {"epsilon": 1.0, "rounds": 2, "clients": 4, "seed": 1, "protocol": "masking", "dp": "local"},
    "paillier-distributed": {"epsilon": 1.0, "rounds": 1, "clients": 4, "seed": 1, "protocol": "paillier"},
}


def make_ledgers(out: Path) -> None:
    from bfl_private.ledger.entries import ROUND_CLOSE as CLOSE
    from bfl_private.ledger.store import Ledger
    from bfl_private.protocols.base import recompute_total

    from bfl_private.audit import audit
    from bfl_private.runner import RoundOptions, run_command

    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, options in LEDGERS.items():
            federation = Path(scratch) / name
            report = run_command(federation, RoundOptions(**options), quiet=True)
            assert all(r.status == "accepted" for r in report.rounds), report.rounds
            target = out / "ledgers" / name
            target.mkdir(parents=True)
            shutil.copy2(federation / "ledger.sqlite3", target / "ledger.sqlite3")
            shutil.copytree(federation / "blobs", target / "blobs")
            assert not (target / "keys").exists()
            result = audit(target)
            assert result.ok, result.report.error
            verified = result.to_json()
            rounds = []
            with Ledger.open(federation) as ledger:
                log = list(ledger.entries())
                for close in (e for e in log if e.type == CLOSE):
                    opened = next(e for e in log if e.type == ROUND_OPEN and e.round == close.round)
                    transcript = ledger.blobs.get_json(close.payload["transcript_cid"])
                    submissions = {e.payload["client"]: e.payload["blob_cid"] for e in log
                                   if e.type == SUBMISSION and e.round == close.round
                                   and e.payload["client"] in close.payload["survivors"]}
                    total = recompute_total(opened.payload["protocol"], transcript,
                                            {c: ledger.blobs.get(cid) for c, cid in submissions.items()})
                    rounds.append({"round": close.round, "protocol": opened.payload["protocol"],
                                   "transcript_cid": close.payload["transcript_cid"], "submissions": submissions,
                                   "total_float64_hex": np.asarray(total, dtype="<f8").tobytes().hex()})
            anchor = verified["anchor"]
            summary[name] = {
                "options": options, "blocks": verified["blocks"], "entries": verified["entries"],
                "head": anchor["head"], "head_note": anchor["head_note"],
                "federation_id": anchor["federation_id"], "genesis_fingerprint": anchor["genesis_fingerprint"],
                "checks": [c["name"] for c in verified["checks"]], "summary": verified["summary"],
                "entry_leaf_hashes": [e.leaf_hash().hex() for e in log], "rounds": rounds,
            }
    write_json(out / "ledgers.json", summary)


def about(deterministic_only: bool) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "ledger", "protocols", "privacy",
                                     "primitives", "bfl_private"], cwd=REPO, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", True
    return {
        "generator": "tests/vectors/known_answers/make.py", "commit": commit, "source_tree_modified": dirty,
        "deterministic_only": deterministic_only, "python": platform.python_version(),
        "libraries": {name: metadata.version(name) for name in
                      ("cryptography", "dp-accounting", "numpy", "phe", "rfc8785", "safetensors")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="name of the new set, e.g. v1 (a new directory here)")
    parser.add_argument("--deterministic-only", action="store_true",
                        help="skip the snapshot files (ledgers, transcripts) and about.json")
    args = parser.parse_args(argv)
    out = HERE / args.version
    if out.exists():
        print(f"{out} exists: frozen sets are never rewritten; choose a new version", file=sys.stderr)
        return 1
    out.mkdir()
    write_json(out / "entries.json", make_entries())
    write_json(out / "masking_messages.json", make_masking_messages())
    write_json(out / "privacy_records.json", make_privacy_records())
    if not args.deterministic_only:
        make_transcripts(out)
        make_ledgers(out)
        write_json(out / "about.json", about(False))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
