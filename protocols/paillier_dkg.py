"""Dealer-free threshold Paillier keys: TNO's distributed key generation, adapted.

``tno.mpc.protocols.distributed_keygen`` (TNO, used for healthcare MPC) generates a
Paillier modulus n = p q among the parties without anyone learning p or q (distributed
biprime generation after Boneh-Franklin, with a biprimality test), then an integer
Shamir sharing of d = lambda(n) beta (beta random, unknown to all) of degree 2t, where t
is the corruption threshold and the parties number at least 2t + 1. This module runs it
among the given parties and turns each party's output into a
:class:`~.threshold_paillier.KeyShare` of the publicly checkable scheme:

* the abscissa of a party is the index TNO assigned it; the quorum is 2t + 1;
* each party publishes its verification key v_i = v^(Delta s_i) from its own share;
  when there are more parties than the quorum, every quorum of verification keys must
  interpolate to the same v^(Delta^2 d) (:func:`check_verification_keys`), so a party
  that published a key not of its share is caught here;
* theta = d mod n is obtained by a threshold decryption of 1 + n (an encryption of 1
  with r = 1): the combination gives 4 Delta^2 theta. TNO itself broadcasts the shares
  modulo n to compute the same residue, so nothing new is revealed.

What this is and is not
-----------------------
* **Dealer-free**: no party ever holds p, q or d. The modulus and the sharing are
  computed jointly.
* **Passively secure only**: TNO's protocol is secure against honest-but-curious
  parties (up to t of them); a validator that deviates *during key generation* is not
  detected by it. After key generation every partial decryption is proven, but the
  modulus is not made of safe primes, so a cheating share holder can make a round's
  combination fail (unattributed) as described in :mod:`.threshold_paillier`.
* **Modulus size**: TNO's n is a few bits longer than asked (2052 bits for 2048 here),
  so it does not fit the packed protocol's fixed ``KEY_BITS``; the federation does not
  use this path (see the README for the measured cost and the decision).
* The parties talk over HTTP (``tno.mpc.communication``); in this simulation every
  party's pool listens on 127.0.0.1 in one process.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
from collections.abc import Sequence

import gmpy2

from .errors import ConfigurationError, MalformedInput
from .threshold_paillier import (
    DISTRIBUTED,
    KeyShare,
    ThresholdPublicKey,
    lagrange_at_zero,
    verification_base,
)


def _free_ports(count: int) -> list[int]:
    """Ports the OS reports free now (bound then released): good enough for a local run."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


async def _run_tno(parties: int, corruption_threshold: int, bits: int) -> list:
    from tno.mpc.communication import Pool
    from tno.mpc.protocols.distributed_keygen import DistributedPaillier

    ports = _free_ports(parties)
    pools = []
    for i, port in enumerate(ports):
        pool = Pool()
        pool.add_http_server(port=port)
        for j, other in enumerate(ports):
            if j != i:
                pool.add_http_client(f"party{j}", "127.0.0.1", other)
        pools.append(pool)
    try:
        await asyncio.sleep(0.5)  # let every server listen before the first broadcast
        return await asyncio.gather(*(
            DistributedPaillier.from_security_parameter(pool, corruption_threshold, bits, distributed=False)
            for pool in pools))
    finally:
        for pool in pools:
            await pool.shutdown()


def check_verification_keys(key: ThresholdPublicKey) -> None:
    """Every quorum of verification keys must interpolate to one group element.

    With exactly ``quorum`` parties there is nothing to compare, and this checks nothing.
    """
    n2 = key.nsquare
    expected = None
    for subset in itertools.combinations(range(1, len(key.parties) + 1), key.quorum):
        value = gmpy2.mpz(1)
        for abscissa, mu in zip(subset, lagrange_at_zero(subset, key.delta)):
            value = value * gmpy2.powmod(key.verification_keys[abscissa - 1], mu, n2) % n2
        if expected is None:
            expected = value
        elif value != expected:
            raise MalformedInput(f"verification keys of {[key.parties[i - 1] for i in subset]} are not of one "
                                 f"sharing: some party published a key that is not of its share")


def generate_shares(parties: Sequence[str], *, bits: int, corruption_threshold: int) -> list[KeyShare]:
    """Run TNO's distributed key generation among ``parties`` and return each one's share.

    Needs ``len(parties) >= 2 * corruption_threshold + 1``; the quorum is
    ``2 * corruption_threshold + 1``. Raises :class:`ConfigurationError` otherwise.
    """
    if corruption_threshold < 1 or len(parties) < 2 * corruption_threshold + 1:
        raise ConfigurationError(f"{len(parties)} parties cannot share a key with corruption threshold "
                                 f"{corruption_threshold}: TNO's generation needs at least {2 * corruption_threshold + 1}")
    schemes = asyncio.run(_run_tno(len(parties), corruption_threshold, bits))
    n = int(schemes[0].public_key.n)
    order = sorted(range(len(schemes)), key=lambda k: schemes[k].secret_key.player_id)  # party k ran pool k
    by_index = [schemes[k] for k in order]
    if [s.secret_key.player_id for s in by_index] != list(range(1, len(parties) + 1)) \
            or any(int(s.public_key.n) != n for s in schemes):
        raise MalformedInput("TNO key generation returned inconsistent indices or moduli")
    names = tuple(parties[k] for k in order)
    own = [int(s.secret_key.share.shares[s.secret_key.player_id]) for s in by_index]
    quorum = by_index[0].secret_key.share.degree + 1
    delta, n2, v = math.factorial(len(parties)), n * n, verification_base(n)
    verification_keys = tuple(int(gmpy2.powmod(v, delta * s, n2)) for s in own)
    # theta from a threshold decryption of 1 + n by the first quorum: each party's
    # partial (1 + n)^(2 Delta s_i), combined, is 1 + 4 Delta^2 d n mod n^2.
    combined = gmpy2.mpz(1)
    for share, mu in zip(own[:quorum], lagrange_at_zero(tuple(range(1, quorum + 1)), delta)):
        combined = combined * gmpy2.powmod(gmpy2.powmod(1 + n, 2 * delta * share, n2), 2 * mu, n2) % n2
    theta = int((combined - 1) // n * gmpy2.invert(4 * delta**2, n) % n)
    key = ThresholdPublicKey(n=n, parties=names, quorum=quorum, verification_keys=verification_keys,
                             theta=theta, key_generation=DISTRIBUTED)
    check_verification_keys(key)
    return [KeyShare(key, name, share) for name, share in zip(names, own)]
