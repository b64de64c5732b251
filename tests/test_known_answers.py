"""Known answers for our own formats (tests/vectors/known_answers/, made by its make.py).

The files are frozen: ledger entries and block headers, masking protocol messages,
transcripts, privacy records and whole ledgers written by an earlier version of this code.
Each test decodes them with today's code and, where the encoding is deterministic,
re-encodes them, so a change of any encoder or of a hash, KDF, PRG or accountant fails
here before it can leave old ledgers unverifiable. A deliberate format change adds a new
set (v2...) beside the old ones; it never rewrites them.
"""
from __future__ import annotations

import base64
import math
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
from bfl_private.ledger.blocks import BlockHeader, certificate_note, verify_certificate
from bfl_private.ledger.canonical import canonical_bytes
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import ENTRY_VERSION, Entry
from bfl_private.ledger.errors import MalformedRecord, SignatureError
from bfl_private.ledger.identity import SigningIdentity, VerifyingKey
from bfl_private.ledger.merkle import root_from_leaf_hashes
from bfl_private.ledger.store import SQLiteStore
from bfl_private.privacy.accounting import privacy_record_from_json, recorded_epsilon, verify_claim
from bfl_private.protocols import keyagreement as ka
from bfl_private.protocols import shamir
from bfl_private.protocols.base import recompute_total
from bfl_private.protocols.errors import BadSignature, MalformedInput, ProtocolError
from bfl_private.protocols.masking_messages import (
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
from bfl_private.protocols.prg import expand
from known_answer_vectors import known_answers

from bfl_private.audit import LEGACY_RANDOMNESS, audit

ENTRIES = known_answers("entries")
MASKING = known_answers("masking_messages")
PRIVACY = known_answers("privacy_records")
LEDGERS = known_answers("ledgers")
TRANSCRIPTS = known_answers("transcripts")


def _each(sets, key):
    return [pytest.param(s, item, id=f"{s.id}/{item['name']}") for s in sets for item in s.data[key]]


# --- (a) frozen ledgers: the full audit, and the heads they had when frozen ------------------


LEDGER_CASES = [pytest.param(s, name, id=f"{s.version}/{name}") for s in LEDGERS for name in s.data]


@pytest.fixture
def ledger_copy(tmp_path):
    def copy(answers, name: str) -> Path:
        return Path(shutil.copytree(answers.ledger(name), tmp_path / name))
    return copy


@pytest.mark.parametrize(("answers", "name"), LEDGER_CASES)
def test_frozen_ledger_passes_the_full_audit_with_its_frozen_head(answers, name, ledger_copy):
    expected = answers.data[name]
    directory = ledger_copy(answers, name)
    assert sorted(p.name for p in directory.iterdir()) == ["blobs", "ledger.sqlite3"]  # no keys/
    report = audit(directory, expected_genesis=expected["genesis_fingerprint"],
                   trusted_checkpoint=expected["head_note"])
    assert report.ok, report.report.error
    result = report.to_json()
    assert [c["status"] for c in result["checks"]] == ["passed"] * len(result["checks"])
    # Checks added since the ledgers were frozen run after theirs; a genesis from before the
    # validator beacon is verified under the old seed rule, and the audit says so.
    names = [c["name"] for c in result["checks"]]
    assert names[:len(expected["checks"])] == expected["checks"]
    assert names[len(expected["checks"]):] == ["round randomness"]
    assert LEGACY_RANDOMNESS in result["notes"]
    assert (result["blocks"], result["entries"]) == (expected["blocks"], expected["entries"])
    assert result["anchor"]["head"] == expected["head"]
    assert result["anchor"]["head_note"] == expected["head_note"]
    assert result["anchor"]["federation_id"] == expected["federation_id"]
    assert result["summary"] == expected["summary"]


@pytest.mark.parametrize(("answers", "name"), LEDGER_CASES)
def test_frozen_ledger_entries_reencode_byte_for_byte(answers, name):
    """Every stored entry parses, its fields re-encode (RFC 8785) to the stored bytes, and
    its leaf hash is the frozen one; the audit above checked the signatures."""
    store = SQLiteStore.open(answers.ledger(name) / "ledger.sqlite3", read_only=True)
    try:
        rows = store.entry_rows()
    finally:
        store.close()
    assert [Entry.from_bytes(bytes(data), where=f"entry {i}").leaf_hash().hex() for i, _, data in rows] \
        == answers.data[name]["entry_leaf_hashes"]
    for index, _, data in rows:
        entry = Entry.from_bytes(bytes(data), where=f"entry {index}")
        assert canonical_bytes(_envelope(entry)) == bytes(data)


@pytest.mark.parametrize(("answers", "name"), LEDGER_CASES)
def test_frozen_ledger_transcripts_recompute_their_totals(answers, name):
    blobs = answers.ledger(name) / "blobs"
    rounds = answers.data[name]["rounds"]
    assert rounds
    for frozen in rounds:
        transcript = _json_blob(blobs, frozen["transcript_cid"])
        submissions = {c: (blobs / cid).read_bytes() for c, cid in frozen["submissions"].items()}
        total = recompute_total(frozen["protocol"], transcript, submissions)
        assert np.asarray(total, dtype="<f8").tobytes().hex() == frozen["total_float64_hex"]


@pytest.mark.parametrize(("answers", "name"), LEDGER_CASES)
def test_a_flipped_byte_in_a_frozen_ledger_entry_fails_the_audit(answers, name, ledger_copy):
    directory = ledger_copy(answers, name)
    with sqlite3.connect(directory / "ledger.sqlite3") as db:
        (data,) = db.execute("SELECT data FROM entries WHERE idx = 1").fetchone()
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        db.execute("UPDATE entries SET data = ? WHERE idx = 1", (bytes(flipped),))
    db.close()
    report = audit(directory)
    assert not report.ok


def _json_blob(blobs: Path, cid: str):
    from bfl_private.ledger.canonical import parse_canonical

    data = (blobs / cid).read_bytes()
    assert cid_for(data) == cid
    return parse_canonical(data, where=cid)


# --- (b) entries, block header, CIDs ---------------------------------------------------------


def _envelope(entry: Entry) -> dict:
    return {"author": entry.author, "payload": entry.payload, "round": entry.round,
            "sig": base64.b64encode(entry.signature).decode("ascii"), "type": entry.type, "v": ENTRY_VERSION}


def _signer(answers, name: str) -> SigningIdentity:
    return SigningIdentity.from_private_bytes(name, bytes.fromhex(answers.data["identities"][name]["seed_hex"]))


@pytest.mark.parametrize(("answers", "frozen"), _each(ENTRIES, "entries"))
def test_entry_parses_reencodes_and_verifies(answers, frozen):
    data = bytes.fromhex(frozen["bytes_hex"])
    entry = Entry.from_bytes(data, where=frozen["name"])
    assert (entry.type, entry.round, entry.author, entry.payload) == \
        (frozen["type"], frozen["round"], frozen["author"], frozen["payload"])
    assert base64.b64encode(entry.signature).decode() == frozen["sig"]
    assert canonical_bytes(_envelope(entry)) == data
    assert entry.signed_bytes().hex() == frozen["signed_bytes_hex"]
    assert entry.leaf_hash().hex() == frozen["leaf_hash"]
    identity = answers.data["identities"][frozen["signer"]]
    key = VerifyingKey.from_vkey(identity["vkey"])
    assert key.key_id_hex == identity["key_id"] == entry.author
    entry.verify(key, where=frozen["name"])
    # Ed25519 is deterministic: today's encoder and signer, given the same key and payload,
    # write the very same bytes.
    signer = _signer(answers, frozen["signer"])
    assert signer.public.vkey() == identity["vkey"]
    assert Entry.create(signer, frozen["type"], frozen["round"], frozen["payload"]).to_bytes() == data


@pytest.mark.parametrize("answers", ENTRIES, ids=lambda a: a.id)
def test_block_header_and_certificate(answers):
    block = answers.data["block"]
    data = bytes.fromhex(block["header_hex"])
    header = BlockHeader.from_bytes(data, where="frozen header")
    assert header.signing_bytes() == data
    assert (header.height, header.size, header.time, header.root.hex()) == \
        (block["height"], block["size"], block["time"], block["root"])
    assert header.hash().hex() == block["hash"]
    leaves = [bytes.fromhex(e["leaf_hash"]) for e in answers.data["entries"]]
    assert root_from_leaf_hashes(leaves).hex() == block["root"]
    cosigner = VerifyingKey.from_vkey(answers.data["identities"][block["cosigner"]]["vkey"])
    signatures = {cosigner.key_id_hex: bytes.fromhex(block["cosignature"])}
    verify_certificate(header, signatures, validators={cosigner.key_id_hex: cosigner}, quorum=1)
    assert certificate_note(header, signatures, {cosigner.key_id_hex: cosigner}) == block["certificate_note"]
    assert _signer(answers, block["cosigner"]).sign(data).hex() == block["cosignature"]


@pytest.mark.parametrize("answers", ENTRIES, ids=lambda a: a.id)
def test_blob_cids(answers):
    for frozen in answers.data["cids"]:
        assert cid_for(bytes.fromhex(frozen["data_hex"])) == frozen["cid"]


# --- (f) mutations of frozen entries --------------------------------------------------------


@pytest.mark.parametrize(("answers", "frozen"), _each(ENTRIES, "entries"))
def test_every_flipped_bit_of_an_entry_is_refused(answers, frozen):
    """Flipping the low bit of any byte gives bytes that do not parse or do not verify."""
    data = bytes.fromhex(frozen["bytes_hex"])
    key = VerifyingKey.from_vkey(answers.data["identities"][frozen["signer"]]["vkey"])
    for position in range(len(data)):
        mutated = bytearray(data)
        mutated[position] ^= 0x01
        with pytest.raises((MalformedRecord, SignatureError)):
            Entry.from_bytes(bytes(mutated), where=f"byte {position}").verify(key, where=f"byte {position}")


@pytest.mark.parametrize(("answers", "frozen"), _each(ENTRIES, "entries")[:1])
def test_a_non_canonical_base64_signature_is_refused(answers, frozen):
    data = bytes.fromhex(frozen["bytes_hex"])
    sig = frozen["sig"]
    assert sig.endswith("==")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".index(sig[-3])
    assert last & 0x0F == 0
    other = sig[:-3] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[last | 1] + "=="
    assert base64.b64decode(other) == base64.b64decode(sig)
    mutated = data.replace(sig.encode(), other.encode())
    key = VerifyingKey.from_vkey(answers.data["identities"][frozen["signer"]]["vkey"])
    with pytest.raises((MalformedRecord, SignatureError)):
        Entry.from_bytes(mutated, where="padding bits").verify(key, where="padding bits")


# --- (c) masking protocol messages ----------------------------------------------------------


def _decode(kind: int, data: bytes):
    if kind in (SealedShares.BUNDLE, SealedShares.DELIVERY):
        return SealedShares.from_bytes(data, kind)
    if kind in (Acknowledgements.SINGLE, Acknowledgements.LIST):
        return Acknowledgements.from_bytes(data, kind)
    return {1: KeyAdvertisement, 4: MaskedInput, 5: SurvivorSet, 8: UnmaskResponse}[kind].from_bytes(data)


def _fields(message) -> dict:
    out = {}
    for name, value in vars(message).items():
        if name == "kind":
            continue
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, np.ndarray):
            value = [int(v) for v in value]
        elif isinstance(value, tuple):  # party ids, or (party, bytes) items
            value = [[item[0], bytes(item[1]).hex()] if isinstance(item, tuple) else item for item in value]
        out[name] = value
    return out


@pytest.mark.parametrize(("answers", "frozen"), _each(MASKING, "messages"))
def test_masking_message_decodes_to_frozen_fields_and_reencodes(answers, frozen):
    data = bytes.fromhex(frozen["hex"])
    message = _decode(frozen["kind"], data)
    assert _fields(message) == frozen["fields"]
    assert message.to_bytes() == data
    assert data[:4] == b"BSA1" and data[4] == frozen["kind"]


@pytest.mark.parametrize(("answers", "frozen"), _each(MASKING, "messages"))
def test_a_flipped_byte_in_a_masking_message_is_noticed(answers, frozen):
    """A header byte flipped is refused on receipt; a body byte flipped changes the fields
    (and, where they are signed or sealed, breaks the signature or tag: checked below)."""
    data = bytes.fromhex(frozen["hex"])
    for position in (0, 4):
        mutated = bytearray(data)
        mutated[position] ^= 0x01
        with pytest.raises(MalformedInput):
            _decode(frozen["kind"], bytes(mutated))
    mutated = bytearray(data)
    mutated[-1] ^= 0x01
    try:
        assert _fields(_decode(frozen["kind"], bytes(mutated))) != frozen["fields"]
    except MalformedInput:
        pass


def test_masking_signatures_seals_and_derivations():
    """What the frozen messages were built from: signatures under the identity keys, sealed
    shares opening under the HKDF share keys, pairwise mask seeds, Shamir shares recovering
    the secrets, self-mask commitments, the AES-CTR PRG, and masks cancelling in the sum."""
    for answers in MASKING:
        d = answers.data
        r, derived = d["round_id"], d["derived"]
        identity = {int(c): bytes.fromhex(k) for c, k in d["identity_keys"].items()}
        messages = {m["name"]: _decode(m["kind"], bytes.fromhex(m["hex"])) for m in d["messages"]}
        adverts = {c: messages[f"key_advertisement_{c}"] for c in identity}
        for c, advert in adverts.items():
            ka.verify(identity[c], advert.signature, advert.signed_bytes(), what=f"advert {c}")
            with pytest.raises(BadSignature):
                ka.verify(identity[c], advert.signature, advert.signed_bytes()[:-1] + b"\0", what="mutated")
        for c, identity_key in identity.items():
            bundle, shares = messages[f"share_bundle_{c}"], derived["shares"][str(c)]
            seed = bytes.fromhex(shares["self_mask_seed"])
            assert self_mask_commitment(r, c, seed) == bundle.commitment
            assert bundle.commitment.hex() == derived["commitments"][str(c)]
            ka.verify(identity_key, bundle.signature, commitment_payload(r, c, bundle.commitment), what="commitment")
            mask_key = ka.x25519_private_from_bytes(bytes.fromhex(shares["mask_private_key"]), what="mask key")
            assert ka.public_bytes(mask_key) == adverts[c].mask_key
            for peer, sealed in bundle.items:
                key = bytes.fromhex(derived["share_keys"][f"{c}->{peer}"])
                plain = ka.open_sealed(key, sealed, share_associated_data(r, c, peer), what="share")
                assert struct.unpack(">II", plain[:8]) == (c, peer)
                x = str(peer + 1)
                assert shamir.decode_share(plain[8:41]) == shares["b_shares"][x]
                assert shamir.decode_share(plain[41:]) == shares["s_shares"][x]
                with pytest.raises(BadSignature):
                    ka.open_sealed(key, sealed, share_associated_data(r, peer, c), what="wrong direction")
                if c < peer:
                    seed_cp = ka.mask_seed(mask_key, adverts[peer].mask_key, round_id=r, a=c, b=peer)
                    assert seed_cp.hex() == derived["mask_seeds"][f"{c}-{peer}"]
            b = {int(x): v for x, v in shares["b_shares"].items()}
            s = {int(x): v for x, v in shares["s_shares"].items()}
            assert shamir.combine(b, threshold=d["threshold"], secret_bytes=16) == seed
            assert shamir.combine(s, threshold=d["threshold"], secret_bytes=32) == ka.private_bytes(mask_key)
        delivery = messages["share_delivery_1"]
        assert dict(delivery.items) == {s: dict(messages[f"share_bundle_{s}"].items)[1] for s in (0, 2)}
        survivors = messages["survivor_set"].survivors
        for signer, signature in messages["signature_list"].signatures:
            ka.verify(identity[signer], signature, survivor_payload(r, survivors), what=f"ack {signer}")
        assert messages["acknowledgement_1"].signatures == ((1, dict(messages["signature_list"].signatures)[1]),)
        unmask = messages["unmask_response_1"]
        assert shamir.decode_share(dict(unmask.self_mask_shares)[0]) == derived["shares"]["0"]["b_shares"]["2"]
        assert shamir.decode_share(dict(unmask.mask_key_shares)[2]) == derived["shares"]["2"]["s_shares"]["2"]
        prg = derived["prg"]
        assert [int(v) for v in expand(bytes.fromhex(prg["seed"]), len(prg["words"]))] == prg["words"]
        total = np.zeros(d["length"], dtype=np.uint32)
        for c in identity:
            total += messages[f"masked_input_{c}"].vector
            total -= expand(bytes.fromhex(derived["shares"][str(c)]["self_mask_seed"]), d["length"])
        assert [int(v) for v in total] == derived["sum_of_inputs"]
        assert derived["sum_of_inputs"] == [sum(d["inputs"][str(c)][j] for c in identity) for j in range(d["length"])]


# --- (d) transcripts ------------------------------------------------------------------------


def _submissions(frozen) -> dict[str, bytes]:
    return {c: base64.b64decode(b) for c, b in frozen["submissions"].items()}


@pytest.mark.parametrize("answers", TRANSCRIPTS, ids=lambda a: a.id)
def test_transcript_recomputes_its_total_exactly(answers):
    frozen = answers.data
    total = recompute_total(frozen["protocol"], frozen["transcript"], _submissions(frozen))
    assert np.asarray(total, dtype="<f8").tobytes().hex() == frozen["total_float64_hex"]
    assert [float(v) for v in total] == frozen["total"]
    assert sorted(_submissions(frozen)) == frozen["included"]


@pytest.mark.parametrize("answers", TRANSCRIPTS, ids=lambda a: a.id)
def test_a_flipped_byte_in_a_transcript_submission_is_refused(answers):
    frozen = answers.data
    submissions = _submissions(frozen)
    client = min(submissions)
    mutated = bytearray(submissions[client])
    mutated[-1] ^= 0x01  # the last coordinate's (or ciphertext's) low bit
    with pytest.raises(ProtocolError):
        recompute_total(frozen["protocol"], frozen["transcript"], {**submissions, client: bytes(mutated)})


# --- (e) privacy records --------------------------------------------------------------------


@pytest.mark.parametrize(("answers", "frozen"), _each(PRIVACY, "histories"))
def test_privacy_records_recompute_their_epsilon(answers, frozen):
    records = [privacy_record_from_json(r, where=f"{frozen['name']}[{i}]") for i, r in enumerate(frozen["records"])]
    assert [r.to_json() for r in records] == frozen["records"]
    assert canonical_bytes([r.to_json() for r in records]) == canonical_bytes(frozen["records"])
    epsilon = recorded_epsilon(records)
    assert math.isclose(epsilon, frozen["epsilon"], rel_tol=1e-12, abs_tol=0.0), (epsilon, frozen["epsilon"])
    verify_claim(records, frozen["epsilon"], where=frozen["name"])
