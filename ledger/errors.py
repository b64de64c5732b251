"""One error tree for everything the ledger checks, in the style of sigstore's verifier.

Every check raises a narrow subclass of :class:`VerificationError` (never returns a
boolean); the message says what failed and where (block height, entry index, CID, ...).
:class:`LedgerError` (below the package's root, :class:`BflError`) is the base of the
layer's errors: a verification failure, or :class:`ChainUnavailable`, an EVM node or
anchor contract that cannot be reached, which says nothing about the ledger and so is not
a VerificationError.
"""
from __future__ import annotations

from ..primitives.errors import BflError


class LedgerError(BflError):
    """Base class of every error raised by ``bfl_private.ledger``."""


class VerificationError(LedgerError):
    """Base class: something recorded does not verify."""


class MalformedRecord(VerificationError, ValueError):
    """Bytes that do not parse as the record they claim to be (JSON, note, header, ...)."""


class MerkleError(VerificationError):
    """Base class of Merkle tree failures."""


class InclusionProofError(MerkleError):
    """An inclusion proof does not lead to the expected root (RFC 9162 §2.1.3.2)."""


class ConsistencyProofError(MerkleError):
    """A consistency proof does not link the two tree heads (RFC 9162 §2.1.4.2)."""


class RootMismatch(MerkleError):
    """A recomputed Merkle root or tree size differs from the recorded one."""


class SignatureError(VerificationError):
    """A signature does not verify under the key it names, or names an unknown key."""


class QuorumError(VerificationError):
    """Fewer valid validator signatures than the quorum requires."""


class CIDMismatch(VerificationError):
    """Blob bytes that do not hash to their content identifier, or a missing blob."""


class ChainError(VerificationError):
    """The hash chain of blocks is broken: wrong previous hash, height gap, fork, truncation."""


class StateRootMismatch(VerificationError):
    """Replaying the contracts gives a state whose root differs from the block's."""


class ContractViolation(VerificationError):
    """An entry that the contracts refuse (unregistered client, replay, over budget, ...)."""

    def __init__(self, message: str, *, entry: int | None = None) -> None:
        super().__init__(message)
        self.entry = entry
        """Log index of the refused entry, when known (the verifier reports it)."""


class StorageError(VerificationError):
    """The SQLite store or blob directory is unreadable or structurally damaged."""


class SemanticCheckError(VerificationError):
    """A semantic hook (aggregate, model, epsilon recomputation) found a false claim."""


class EVMError(LedgerError):
    """Base class of failures on the EVM chain that anchors the ledger (ledger.chain)."""


class ChainRevert(EVMError, VerificationError):
    """A contract call reverted (eth-tester's TransactionFailed or a node's
    ContractLogicError); the message carries the contract's reason. The on-chain contract
    refused what the ledger holds, as :class:`ContractViolation` is the embedded one's."""


class ChainUnavailable(EVMError):
    """No node answers at the URL (refused, timed out, gone mid-run), the node refuses a
    call, or no anchor contract runs at the address. Not a VerificationError: the chain
    could not be asked, so nothing is known about the ledger (``bfl-private`` exits 4)."""


class ChainMismatch(EVMError, VerificationError):
    """What the chain holds (anchored headers, finality, epsilon, balances) differs from
    the ledger."""
