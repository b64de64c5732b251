"""The validators as the Paillier decryptor: no single party can decrypt.

Replaces the single :class:`~bfl_private.protocols.paillier.PaillierKeyHolder` of a
Paillier round by a committee of share holders (the validators), each holding one share
of the threshold key (:mod:`.threshold_paillier`):

* every share holder recomputes the homomorphic sum itself from the committed
  submissions, with the key holder's refusals (:func:`~.paillier.checked_sum`: too few
  summands, replays, another key, a claimed sum that differs), and only then publishes
  its partial decryption of each aggregate ciphertext with its proof;
* the aggregator asks the holders in turn, checks each answer's proofs, names and skips
  a holder whose partials fail (recorded under ``refused``), and stops at a quorum;
* the round transcript carries the threshold key and the partials
  (:class:`~.threshold_paillier.ThresholdDecryptionRecord`), so the auditor re-checks
  every proof and re-combines (``paillier.recompute_from_submissions``).

A submission is a public blob, but decrypting it needs a quorum of holders to each
agree to; a holder alone, or any set smaller than the quorum, cannot.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phe.paillier import PaillierPublicKey

from .errors import ConfigurationError, ProtocolError, TooManyDropouts, WrongKey
from .paillier import PackingLayout, checked_sum
from .threshold_paillier import (
    KeyShare,
    PartialDecryption,
    ThresholdDecryptionRecord,
    ThresholdPublicKey,
    interpolate,
    partial_decrypt,
    round_context,
    verify_partial,
)


class ShareHolder:
    """One validator's role in decryption: it holds one key share and never decrypts a
    sum it has not recomputed itself."""

    def __init__(self, share: KeyShare, *, min_summands: int = 2) -> None:
        if min_summands < 1:
            raise ConfigurationError(f"min_summands must be >= 1, got {min_summands}")
        self.share = share
        self.min_summands = min_summands

    @property
    def party(self) -> str:
        return self.share.party

    def partial_decryptions(self, submissions: Mapping[str, bytes], *, layout: PackingLayout,
                            claimed: Sequence[int] | None, round_id: int) -> PartialDecryption:
        public_key = PaillierPublicKey(self.share.public_key.n)
        aggregate = checked_sum(public_key, submissions, layout=layout, min_summands=self.min_summands,
                                round_id=round_id, claimed=claimed)
        return partial_decrypt(self.share, aggregate, context=round_context(round_id))


@dataclass(frozen=True)
class ThresholdAggregateDecryption:
    """The committee's answer: the sum, its plaintexts and the record that proves them."""

    aggregate: tuple[int, ...]
    plaintexts: tuple[int, ...]
    summands: int
    record: ThresholdDecryptionRecord

    def transcript_record(self) -> dict[str, Any]:
        """The :class:`~.paillier.PaillierTranscript` field with which the auditor checks this decryption."""
        return {"threshold_decryption": self.record}


class ValidatorCommittee:
    """A :class:`~.paillier.PaillierDecryptor` made of share holders; ``holders`` are asked
    in order (those that answer: a holder that is gone is simply not passed in)."""

    def __init__(self, key: ThresholdPublicKey, holders: Sequence[ShareHolder]) -> None:
        for holder in holders:
            if holder.share.public_key != key:
                raise WrongKey(f"share of {holder.party!r} belongs to another threshold key")
        if len({h.party for h in holders}) != len(holders):
            raise ConfigurationError("each share holder may sit on the committee once")
        self.key = key
        self.holders = list(holders)
        self._public_key = PaillierPublicKey(key.n)

    @property
    def public_key(self) -> PaillierPublicKey:
        return self._public_key

    def decrypt_aggregate(self, submissions: Mapping[str, bytes], *, layout: PackingLayout,
                          claimed: Sequence[int] | None = None,
                          round_id: int | None = None) -> ThresholdAggregateDecryption:
        """Collect verified partial decryptions from a quorum of holders and combine them.

        A holder that refuses (its own recomputation disagrees, too few summands, ...) or
        whose partials fail their proofs is recorded under ``refused`` with the reason and
        the next holder is asked. Raises :class:`TooManyDropouts` when no quorum answers
        (with the refusals in its message).
        """
        if round_id is None:
            raise ConfigurationError("a threshold decryption is bound to its round: pass round_id")
        aggregate = checked_sum(self.public_key, submissions, layout=layout, min_summands=1, round_id=round_id,
                                claimed=claimed)
        context = round_context(round_id)
        accepted: list[PartialDecryption] = []
        refused: dict[str, str] = {}
        for holder in self.holders:
            if len(accepted) == self.key.quorum:
                break
            try:
                partial = holder.partial_decryptions(submissions, layout=layout, claimed=aggregate, round_id=round_id)
                if partial.party != holder.party:
                    raise WrongKey(f"{holder.party!r} answered in the name of {partial.party!r}")
                verify_partial(self.key, aggregate, partial, context=context)
            except ProtocolError as exc:
                refused[holder.party] = str(exc)
                continue
            accepted.append(partial)
        if len(accepted) < self.key.quorum:
            raise TooManyDropouts(
                f"{len(accepted)} of the {self.key.quorum} share holders needed gave valid partial decryptions"
                + (f"; refused: {refused}" if refused else ""),
                stage="decrypt", required=self.key.quorum, available=len(accepted))
        return ThresholdAggregateDecryption(tuple(aggregate), tuple(interpolate(self.key, accepted)), len(submissions),
                                            ThresholdDecryptionRecord(self.key, tuple(accepted), refused))
