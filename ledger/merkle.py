"""The Merkle tree of the ledger's log, exactly as RFC 9162 §2.1 (same hashes as RFC 6962).

Every function works on *leaf hashes* (32 bytes, ``leaf_hash(entry_bytes)``), so the store
hashes each entry once and never re-reads entry bodies to answer a proof.

Two ways to build proofs:

* ``inclusion_proof(hashes, index)`` / ``consistency_proof(hashes, old_size)`` take the full
  list of leaf hashes and follow the RFC's recursive definitions literally (§2.1.3.1,
  §2.1.4.1). They are the reference.
* ``inclusion_proof_from(subtree, index, size)`` / ``consistency_proof_from(subtree, old_size,
  new_size)`` / ``root_from(subtree, size)`` ask a callback for the hashes of *perfect
  aligned* subtrees only: ``subtree(start, end)`` is called with ``end - start`` a power of
  two and ``start`` a multiple of it, and must return MTH(D[start:end]). A store that keeps
  those hashes (one row per completed node, which :class:`Frontier` reports as leaves are
  appended) answers every proof in O(log n) lookups. Right-edge subtrees that are not
  perfect are assembled here from at most log2(n) perfect ones.

The verifiers return ``None`` or raise :class:`~bfl_private.ledger.errors.InclusionProofError`
/ :class:`~bfl_private.ledger.errors.ConsistencyProofError`; they never return booleans.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from .errors import ConsistencyProofError, InclusionProofError, MerkleError

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: MTH({}) = SHA-256() (RFC 9162 §2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: ``subtree(start, end)`` -> MTH(D[start:end]) for a perfect aligned range.
SubtreeHash = Callable[[int, int], bytes]


def leaf_hash(data: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0) (RFC 9162 §2.1.1); the prefix separates leaves from nodes."""
    return hashlib.sha256(LEAF_PREFIX + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), the interior node of RFC 9162 §2.1.1."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``k`` in RFC 9162 §2.1.1), n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: bytes, what: str, error: type[MerkleError]) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise error(f"{what} must be a {HASH_SIZE}-byte SHA-256 hash, got {size}")


def _check_size(value: int, what: str, error: type[MerkleError]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise error(f"{what} must be a non-negative integer, got {value!r}")


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1 over already hashed leaves; the empty tree is SHA-256("").

    Folds the leaves left to right keeping only the right-edge perfect subtrees, which is the
    same tree as the recursive definition (every split point k is a power of two).
    """
    frontier = Frontier()
    for index, h in enumerate(hashes):
        _check_hash(h, f"leaf hash {index}", MerkleError)
        frontier.append(h)
    return frontier.root()


# --- reference proofs over a full list (RFC 9162 §2.1.3.1 and §2.1.4.1, literally) -----


def _mth(hashes: Sequence[bytes]) -> bytes:
    """Recursive MTH (RFC 9162 §2.1.1), used only by the literal reference proofs."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = _split(n)
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    n = len(hashes)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return _path(m, hashes[:k]) + [_mth(hashes[k:])]
    return _path(m - k, hashes[k:]) + [_mth(hashes[:k])]


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(hashes)
    if m == n:
        return [] if complete else [_mth(hashes)]
    k = _split(n)
    if m <= k:
        return _subproof(m, hashes[:k], complete) + [_mth(hashes[k:])]
    return _subproof(m - k, hashes[k:], False) + [_mth(hashes[:k])]


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1, computed from the whole list of leaf hashes."""
    _check_size(index, "leaf index", InclusionProofError)
    if index >= len(hashes):
        raise InclusionProofError(f"leaf index {index} is outside a tree of size {len(hashes)}")
    return _path(index, list(hashes))


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 between the prefix of ``old_size`` leaves and all.

    Empty when ``old_size`` is 0 (every tree extends the empty one) or equals ``len(hashes)``.
    """
    _check_size(old_size, "old tree size", ConsistencyProofError)
    n = len(hashes)
    if old_size > n:
        raise ConsistencyProofError(f"old tree size {old_size} exceeds new tree size {n}")
    if old_size == 0 or old_size == n:
        return []
    return _subproof(old_size, list(hashes), True)


# --- proofs from perfect-subtree lookups: O(log n) callbacks ----------------------------


def _perfect_ranges(start: int, end: int) -> list[tuple[int, int]]:
    """Split [start, end) into the perfect aligned subtrees of RFC 9162's tree, left to right.

    ``start`` must be aligned to the largest power of two not exceeding ``end - start`` (true
    for every range the RFC's recursion produces); then the pieces follow the binary digits
    of the width, largest first, at most log2(n) of them.
    """
    ranges = []
    width = end - start
    while width:
        piece = 1 << (width.bit_length() - 1)
        ranges.append((start, start + piece))
        start += piece
        width -= piece
    return ranges


def _range_hash(subtree: SubtreeHash, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for a range on the RFC's split points, from perfect subtrees."""
    pieces = [subtree(s, e) for s, e in _perfect_ranges(start, end)]
    acc = pieces[-1]
    for piece in reversed(pieces[:-1]):
        acc = node_hash(piece, acc)
    return acc


def root_from(subtree: SubtreeHash, size: int) -> bytes:
    """MTH(D[size]) (RFC 9162 §2.1.1) from at most log2(size)+1 perfect-subtree lookups."""
    _check_size(size, "tree size", MerkleError)
    return EMPTY_ROOT if size == 0 else _range_hash(subtree, 0, size)


def inclusion_proof_from(subtree: SubtreeHash, index: int, size: int) -> list[bytes]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1 from perfect-subtree lookups.

    Walks the RFC's recursion top-down over index ranges instead of leaf lists; only the one
    right-edge sibling may be imperfect, so the cost is O(log size) lookups.
    """
    _check_size(index, "leaf index", InclusionProofError)
    _check_size(size, "tree size", InclusionProofError)
    if index >= size:
        raise InclusionProofError(f"leaf index {index} is outside a tree of size {size}")
    lo, hi = 0, size
    path: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(_range_hash(subtree, lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_proof_from(subtree: SubtreeHash, old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1 from perfect-subtree lookups.

    The RFC's SUBPROOF recursion over index ranges; O(log new_size) lookups.
    """
    _check_size(old_size, "old tree size", ConsistencyProofError)
    _check_size(new_size, "new tree size", ConsistencyProofError)
    if old_size > new_size:
        raise ConsistencyProofError(
            f"old tree size {old_size} exceeds new tree size {new_size}"
        )
    if old_size == 0 or old_size == new_size:
        return []
    lo, hi, m, complete = 0, new_size, old_size, True
    proof: list[bytes] = []
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(_range_hash(subtree, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    if not complete:
        proof.append(_range_hash(subtree, lo, hi))
    proof.reverse()
    return proof


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) --------------------------------------


def root_from_inclusion_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index`` (RFC 9162 §2.1.3.2 steps 1-5).

    Raises :class:`InclusionProofError` when the proof has the wrong length for
    (``index``, ``size``) or a malformed hash; comparing with a trusted root is the caller's.
    """
    _check_size(index, "leaf index", InclusionProofError)
    _check_size(size, "tree size", InclusionProofError)
    if index >= size:
        raise InclusionProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_hash(leaf, "leaf hash", InclusionProofError)
    fn, sn = index, size - 1
    r = bytes(leaf)
    for position, p in enumerate(proof):
        _check_hash(p, f"inclusion proof element {position}", InclusionProofError)
        if sn == 0:
            raise InclusionProofError(
                f"inclusion proof for leaf {index} of {size} is too long: "
                f"{len(proof)} elements"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionProofError(
            f"inclusion proof for leaf {index} of {size} is too short: {len(proof)} elements"
        )
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` with head ``root``.

    RFC 9162 §2.1.3.2. Returns None; raises :class:`InclusionProofError` naming the leaf.
    """
    _check_hash(root, "root hash", InclusionProofError)
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if computed != root:
        raise InclusionProofError(
            f"inclusion proof for leaf {index} of tree size {size} leads to root "
            f"{computed.hex()}, expected {bytes(root).hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    RFC 9162 §2.1.4.2 for 0 < old_size < new_size. Edge cases as in transparency-dev/merkle:
    equal sizes need equal roots and an empty proof; an empty old tree must have the empty
    root and an empty proof. Returns None; raises :class:`ConsistencyProofError`.
    """
    _check_size(old_size, "old tree size", ConsistencyProofError)
    _check_size(new_size, "new tree size", ConsistencyProofError)
    _check_hash(old_root, "old root hash", ConsistencyProofError)
    _check_hash(new_root, "new root hash", ConsistencyProofError)
    if old_size > new_size:
        raise ConsistencyProofError(f"old tree size {old_size} exceeds new tree size {new_size}")
    if old_size == new_size or old_size == 0:
        if proof:
            raise ConsistencyProofError(
                f"consistency proof from size {old_size} to {new_size} must be empty, "
                f"got {len(proof)} elements"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ConsistencyProofError("old root of the empty tree is not SHA-256('')")
        if old_size == new_size and old_root != new_root:
            raise ConsistencyProofError(
                f"trees of equal size {old_size} have different roots "
                f"{bytes(old_root).hex()} and {bytes(new_root).hex()}"
            )
        return
    if not proof:
        raise ConsistencyProofError(
            f"consistency proof from size {old_size} to {new_size} is empty"
        )
    for position, c in enumerate(proof):
        _check_hash(c, f"consistency proof element {position}", ConsistencyProofError)
    path = list(proof)
    # Step 2: a perfect old tree is its own first node.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyProofError(
                f"consistency proof from size {old_size} to {new_size} is too long: "
                f"{len(proof)} elements"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyProofError(
            f"consistency proof from size {old_size} to {new_size} is too short: "
            f"{len(proof)} elements"
        )
    if fr != old_root:
        raise ConsistencyProofError(
            f"consistency proof from size {old_size} to {new_size} does not reproduce the "
            f"old root {bytes(old_root).hex()}"
        )
    if sr != new_root:
        raise ConsistencyProofError(
            f"consistency proof from size {old_size} to {new_size} does not reproduce the "
            f"new root {bytes(new_root).hex()}"
        )


# --- subtrees (draft-ietf-plants-merkle-tree-certs §4.1, §4.3, §4.4) -------------------
#
# A *subtree* [start, end) of the log is a node of RFC 9162's tree or the right-edge
# ancestor set of one: valid when start < end and start is a multiple of BIT_CEIL(end -
# start). Its hash is MTH(D[start:end]). These proofs let a checkpoint vouch for a range of
# entries (e.g. one round's block) without one inclusion proof per entry. The golden
# vectors of transparency-dev/merkle also treat the empty range [i, i) (hash SHA-256(""))
# as trivially consistent with every tree that contains it; so do we.


def is_valid_subtree(start: int, end: int) -> bool:
    """Whether [start, end) is a subtree (MTC draft §4.1).

    That is start < end and start a multiple of BIT_CEIL(end - start)."""
    if start < 0 or start >= end:
        return False
    width = end - start
    return start % (1 << (width - 1).bit_length()) == 0


def _check_subtree(start: int, end: int, error: type[MerkleError]) -> None:
    _check_size(start, "subtree start", error)
    _check_size(end, "subtree end", error)
    if not is_valid_subtree(start, end):
        raise error(f"[{start}, {end}) is not a valid subtree (start must be a multiple of "
                    f"the power of two at least its width)")


def verify_subtree_inclusion(
    leaf: bytes, index: int, start: int, end: int, proof: Sequence[bytes], subtree_root: bytes
) -> None:
    """Check that ``leaf`` is entry ``index`` of subtree [start, end) hashing to ``subtree_root``.

    MTC draft §4.3.3: the subtree is itself a RFC 9162 tree of ``end - start`` leaves, so
    this is :func:`verify_inclusion` of ``index - start``. Raises InclusionProofError.
    """
    _check_subtree(start, end, InclusionProofError)
    _check_size(index, "leaf index", InclusionProofError)
    if not start <= index < end:
        raise InclusionProofError(f"leaf index {index} is outside the subtree [{start}, {end})")
    verify_inclusion(leaf, index - start, end - start, proof, subtree_root)


def subtree_consistency_proof(hashes: Sequence[bytes], start: int, end: int) -> list[bytes]:
    """SUBTREE_PROOF(start, end, D[n]) (MTC draft §4.4.1) from the full list of leaf hashes.

    Shows that the subtree [start, end) with its hash sits at those positions in the tree of
    all ``hashes``; the RFC 9162 consistency proof is the case start = 0.
    """
    _check_subtree(start, end, ConsistencyProofError)
    if end > len(hashes):
        raise ConsistencyProofError(f"subtree [{start}, {end}) exceeds tree size {len(hashes)}")

    def subproof(lo: int, hi: int, leaves: Sequence[bytes], known: bool) -> list[bytes]:
        n = len(leaves)
        if lo == 0 and hi == n:
            return [] if known else [_mth(leaves)]
        k = _split(n)
        if hi <= k:
            return subproof(lo, hi, leaves[:k], known) + [_mth(leaves[k:])]
        if k <= lo:
            return subproof(lo - k, hi - k, leaves[k:], known) + [_mth(leaves[:k])]
        # lo < k < hi only for lo == 0: the subtree straddles the split (MTC draft §4.4.1).
        return subproof(0, hi - k, leaves[k:], False) + [_mth(leaves[:k])]

    return subproof(start, end, list(hashes), True)


def verify_subtree_consistency(
    start: int,
    end: int,
    size: int,
    proof: Sequence[bytes],
    subtree_root: bytes,
    root: bytes,
) -> None:
    """Check that subtree [start, end) with hash ``subtree_root`` is part of tree (size, root).

    MTC draft §4.4.3 (its Appendix B.5 procedure). An empty range [i, i) with i <= size and
    hash SHA-256("") is consistent with any tree and needs an empty proof. Raises
    ConsistencyProofError.
    """
    _check_size(start, "subtree start", ConsistencyProofError)
    _check_size(end, "subtree end", ConsistencyProofError)
    _check_size(size, "tree size", ConsistencyProofError)
    _check_hash(subtree_root, "subtree hash", ConsistencyProofError)
    _check_hash(root, "root hash", ConsistencyProofError)
    for position, c in enumerate(proof):
        _check_hash(c, f"subtree consistency proof element {position}", ConsistencyProofError)
    if end > size:
        raise ConsistencyProofError(f"subtree [{start}, {end}) exceeds tree size {size}")
    if start == end:
        if proof:
            raise ConsistencyProofError(
                f"proof for the empty subtree [{start}, {end}) must be empty"
            )
        if subtree_root != EMPTY_ROOT:
            raise ConsistencyProofError("hash of an empty subtree is not SHA-256('')")
        return
    _check_subtree(start, end, ConsistencyProofError)
    fn, sn, tn = start, end - 1, size - 1
    if sn == tn:
        while fn != sn:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    else:
        while fn != sn and sn & 1:
            fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if fn == sn:
        fr = sr = bytes(subtree_root)
        rest = list(proof)
    else:
        if not proof:
            raise ConsistencyProofError(f"subtree consistency proof for [{start}, {end}) is empty")
        fr = sr = bytes(proof[0])
        rest = list(proof[1:])
    for c in rest:
        if tn == 0:
            raise ConsistencyProofError(
                f"subtree consistency proof for [{start}, {end}) of {size} is too long"
            )
        if sn & 1 or sn == tn:
            if fn < sn:
                fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not sn & 1:
                fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn, tn = fn >> 1, sn >> 1, tn >> 1
    if tn != 0:
        raise ConsistencyProofError(
            f"subtree consistency proof for [{start}, {end}) of {size} is too short"
        )
    if fr != subtree_root:
        raise ConsistencyProofError(
            f"subtree consistency proof does not reproduce the hash of [{start}, {end})"
        )
    if sr != root:
        raise ConsistencyProofError(
            f"subtree consistency proof for [{start}, {end}) does not reproduce the root of "
            f"tree size {size}"
        )


# --- appending in O(log n) ---------------------------------------------------------------


class Frontier:
    """The right edge of a growing log: one perfect-subtree hash per set bit of its size.

    This is the compact range [0, size) of transparency-dev/merkle's ``compact`` package.
    ``append`` costs O(log n) hashes and reports every perfect subtree it completes, which is
    exactly what a store must keep to serve :func:`inclusion_proof_from` and friends.
    """

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []  # largest (leftmost) subtree first

    @classmethod
    def from_subtree(cls, subtree: SubtreeHash, size: int) -> Frontier:
        """Resume the frontier of a stored log of ``size`` leaves (log2(size) lookups)."""
        _check_size(size, "tree size", MerkleError)
        frontier = cls()
        for start, end in _perfect_ranges(0, size):
            h = subtree(start, end)
            _check_hash(h, f"stored subtree [{start}, {end})", MerkleError)
            frontier._hashes.append(bytes(h))
        frontier._size = size
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the perfect subtrees ``(start, end, hash)`` it completes.

        The first one is the leaf itself ``(i, i + 1, leaf)``; then one per level that the
        new leaf closes, smallest first (node hashes as RFC 9162 §2.1.1).
        """
        _check_hash(leaf, f"leaf hash {self._size}", MerkleError)
        index = self._size
        completed = [(index, index + 1, bytes(leaf))]
        h = bytes(leaf)
        width = 1
        while (index + 1) % (width * 2) == 0:
            h = node_hash(self._hashes.pop(), h)
            width *= 2
            completed.append((index + 1 - width, index + 1, h))
        self._hashes.append(h)
        self._size = index + 1
        return completed

    def root(self) -> bytes:
        """MTH of the leaves so far (RFC 9162 §2.1.1): fold the right edge from the right."""
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc
