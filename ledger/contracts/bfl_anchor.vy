# pragma version 0.4.3
# pragma evm-version cancun
"""
@title bfl-private block anchor, privacy budgets and rewards
@license Apache-2.0
@notice The embedded ledger's budget and reward contracts (ledger/contracts.py) on an EVM
        chain, plus an anchor of every block header that becomes final only when a quorum
        of validator accounts approved that header hash from their own accounts.

        Registry: the deployer (the federation's coordinator) registers validators at
        deployment (in the order of their ledger ids, so `validators(i)` is the i-th
        validator id sorted) and clients before the first header is anchored; after that
        the registry is sealed, as the embedded registry is fixed at genesis.

        Budgets: cumulative epsilon per client in fixed point (epsilon x 10^9, the claim
        rounded UP so the chain never under-reports a spend); a posted value below the
        client's recorded spend or above its lifetime budget reverts.

        Rewards: an ERC-20 token (0 decimals, like the ledger's integer balances) minted
        per settled round by the embedded rule: an accepted round (at least `quorum`
        accepting attestations) gives survivor i
        reward_per_round * w_i * Q // (W * 1_000_000), Q the median accepting quality
        (ppm, lower-middle mean for an even count), W the survivors' total weight; a
        rejected round mints nothing for survivors; each rejected client loses
        penalty_invalid and each dropout penalty_dropout (burnt, never below 0); every
        attesting validator gets validator_reward. A round is settled only against a
        finalised header, once, in round order.
"""

from ethereum.ercs import IERC20

implements: IERC20

MAX_VALIDATORS: constant(uint256) = 64
MAX_CLIENTS: constant(uint256) = 1024
PPM: constant(uint256) = 1_000_000

event Transfer:
    sender: indexed(address)
    receiver: indexed(address)
    value: uint256

event Approval:
    owner: indexed(address)
    spender: indexed(address)
    value: uint256

event ValidatorRegistered:
    validator: indexed(address)

event ClientRegistered:
    client: indexed(address)
    epsilon_budget: uint256

event HeaderProposed:
    header_hash: indexed(bytes32)
    height: indexed(uint256)
    log_size: uint256
    merkle_root: bytes32
    state_root: bytes32

event HeaderApproved:
    header_hash: indexed(bytes32)
    validator: indexed(address)
    approvals: uint256

event HeaderFinalised:
    header_hash: indexed(bytes32)
    height: indexed(uint256)

event EpsilonSpent:
    client: indexed(address)
    round: indexed(uint256)
    cumulative: uint256

event RoundSettled:
    round: indexed(uint256)
    header_hash: indexed(bytes32)
    closed: bool
    accepted: bool
    quality_ppm: uint256
    minted: uint256

struct Header:
    height: uint256
    prev_hash: bytes32
    log_size: uint256
    merkle_root: bytes32
    state_root: bytes32
    approvals: uint256
    finalised: bool

# --- ERC-20 -----------------------------------------------------------------------------
name: public(String[32])
symbol: public(String[8])
decimals: public(uint8)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])

# --- registry ---------------------------------------------------------------------------
owner: public(address)
quorum: public(uint256)
validators: public(DynArray[address, MAX_VALIDATORS])
client_count: public(uint256)
is_validator: public(HashMap[address, bool])
is_client: public(HashMap[address, bool])
epsilon_budget: public(HashMap[address, uint256])
epsilon_spent: public(HashMap[address, uint256])
reward_per_round: public(uint256)
penalty_invalid: public(uint256)
penalty_dropout: public(uint256)
validator_reward: public(uint256)

# --- anchor and rounds ------------------------------------------------------------------
headers: public(HashMap[bytes32, Header])
header_at: public(HashMap[uint256, bytes32])
anchored: public(uint256)
approved_by: public(HashMap[bytes32, HashMap[address, bool]])
last_round: public(uint256)


@deploy
def __init__(
    quorum: uint256,
    validators: DynArray[address, MAX_VALIDATORS],
    reward_per_round: uint256,
    penalty_invalid: uint256,
    penalty_dropout: uint256,
    validator_reward: uint256,
):
    n: uint256 = len(validators)
    assert n > 0, "no validators"
    # Byzantine quorum as the embedded registry: n - floor((n-1)/3) <= quorum <= n
    assert quorum >= n - (n - 1) // 3 and quorum <= n, "quorum outside 2f+1 of 3f+1"
    for v: address in validators:
        assert v != empty(address), "zero validator address"
        assert not self.is_validator[v], "validator registered twice"
        self.is_validator[v] = True
        log ValidatorRegistered(validator=v)
    self.validators = validators
    self.quorum = quorum
    self.owner = msg.sender
    self.reward_per_round = reward_per_round
    self.penalty_invalid = penalty_invalid
    self.penalty_dropout = penalty_dropout
    self.validator_reward = validator_reward
    self.name = "bfl-private reward"
    self.symbol = "BFLR"
    self.decimals = 0


@external
def register_clients(clients: DynArray[address, MAX_CLIENTS], budgets: DynArray[uint256, MAX_CLIENTS]):
    """Register clients with their lifetime budgets (epsilon x 10^9), before any anchor."""
    assert msg.sender == self.owner, "only the owner registers"
    assert self.anchored == 0, "registry sealed: a header is already anchored"
    assert len(clients) == len(budgets), "clients and budgets differ in length"
    for i: uint256 in range(len(clients), bound=MAX_CLIENTS):
        c: address = clients[i]
        assert c != empty(address), "zero client address"
        assert not self.is_client[c] and not self.is_validator[c], "address already registered"
        assert budgets[i] > 0, "budget must be > 0"
        self.is_client[c] = True
        self.epsilon_budget[c] = budgets[i]
        log ClientRegistered(client=c, epsilon_budget=budgets[i])
    self.client_count += len(clients)


@external
def propose_header(
    header_hash: bytes32,
    height: uint256,
    prev_hash: bytes32,
    log_size: uint256,
    merkle_root: bytes32,
    state_root: bytes32,
):
    """Anchor the next block header; it is final only after a validator quorum approves."""
    assert msg.sender == self.owner, "only the owner proposes"
    assert header_hash != empty(bytes32), "zero header hash"
    assert self.headers[header_hash].log_size == 0, "header already proposed"
    assert height == self.anchored, "height is not the next one"
    assert log_size > 0, "empty log"
    if height == 0:
        assert prev_hash == empty(bytes32), "genesis block has a previous hash"
    else:
        previous: Header = self.headers[self.header_at[height - 1]]
        assert prev_hash == self.header_at[height - 1], "previous hash is not the last anchor"
        assert previous.finalised, "previous header is not final"
        assert log_size > previous.log_size, "log did not grow"
    self.headers[header_hash] = Header(
        height=height, prev_hash=prev_hash, log_size=log_size, merkle_root=merkle_root,
        state_root=state_root, approvals=0, finalised=False,
    )
    self.header_at[height] = header_hash
    self.anchored = height + 1
    log HeaderProposed(header_hash=header_hash, height=height, log_size=log_size,
                       merkle_root=merkle_root, state_root=state_root)


@external
def approve_header(header_hash: bytes32):
    """A validator approves a header hash from its own account; quorum makes it final."""
    assert self.is_validator[msg.sender], "not a validator"
    assert self.headers[header_hash].log_size != 0, "unknown header"
    assert not self.approved_by[header_hash][msg.sender], "already approved"
    self.approved_by[header_hash][msg.sender] = True
    approvals: uint256 = self.headers[header_hash].approvals + 1
    self.headers[header_hash].approvals = approvals
    log HeaderApproved(header_hash=header_hash, validator=msg.sender, approvals=approvals)
    if approvals == self.quorum:
        self.headers[header_hash].finalised = True
        log HeaderFinalised(header_hash=header_hash, height=self.headers[header_hash].height)


@view
@external
def is_final(header_hash: bytes32) -> bool:
    return self.headers[header_hash].finalised


@internal
def _mint(receiver: address, amount: uint256):
    self.balanceOf[receiver] += amount
    self.totalSupply += amount
    log Transfer(sender=empty(address), receiver=receiver, value=amount)


@internal
def _burn_floor(holder: address, penalty: uint256):
    burnt: uint256 = min(self.balanceOf[holder], penalty)
    self.balanceOf[holder] -= burnt
    self.totalSupply -= burnt
    log Transfer(sender=holder, receiver=empty(address), value=burnt)


@internal
@pure
def _median(values: DynArray[uint256, MAX_VALIDATORS]) -> uint256:
    """Median; for an even count the lower-middle mean, floored (as the embedded rule)."""
    ordered: DynArray[uint256, MAX_VALIDATORS] = []
    for v: uint256 in values:
        ordered.append(v)
        k: uint256 = len(ordered) - 1
        for _: uint256 in range(MAX_VALIDATORS):
            if k == 0:
                break
            if ordered[k - 1] <= ordered[k]:
                break
            swap: uint256 = ordered[k - 1]
            ordered[k - 1] = ordered[k]
            ordered[k] = swap
            k -= 1
    mid: uint256 = len(ordered) // 2
    if len(ordered) % 2 == 1:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) // 2


@external
def settle_round(
    header_hash: bytes32,
    round: uint256,
    closed: bool,
    epsilon_clients: DynArray[address, MAX_CLIENTS],
    epsilon_values: DynArray[uint256, MAX_CLIENTS],
    survivors: DynArray[address, MAX_CLIENTS],
    weights: DynArray[uint256, MAX_CLIENTS],
    rejected: DynArray[address, MAX_CLIENTS],
    dropouts: DynArray[address, MAX_CLIENTS],
    attesters: DynArray[address, MAX_VALIDATORS],
    accepts: DynArray[bool, MAX_VALIDATORS],
    qualities: DynArray[uint256, MAX_VALIDATORS],
):
    """Post a round's privacy spend and, for a closed round, mint and burn its rewards.

    An aborted round (closed == False) records epsilon only, like the embedded contract.
    """
    assert msg.sender == self.owner, "only the owner settles"
    assert self.headers[header_hash].finalised, "header is not final"
    assert round == self.last_round + 1, "round is not the next one"
    assert len(epsilon_clients) == len(epsilon_values), "epsilon lists differ in length"
    self.last_round = round
    for i: uint256 in range(len(epsilon_clients), bound=MAX_CLIENTS):
        c: address = epsilon_clients[i]
        spent: uint256 = epsilon_values[i]
        assert self.is_client[c], "epsilon for an unregistered client"
        assert spent >= self.epsilon_spent[c], "cumulative epsilon would decrease"
        assert spent <= self.epsilon_budget[c], "cumulative epsilon exceeds the lifetime budget"
        self.epsilon_spent[c] = spent
        log EpsilonSpent(client=c, round=round, cumulative=spent)
    if not closed:
        assert len(survivors) + len(rejected) + len(dropouts) + len(attesters) == 0, \
            "an aborted round mints and penalises nothing"
        log RoundSettled(round=round, header_hash=header_hash, closed=False, accepted=False,
                         quality_ppm=0, minted=0)
        return
    assert len(survivors) == len(weights), "survivors and weights differ in length"
    assert len(attesters) == len(accepts) and len(attesters) == len(qualities), \
        "attestation lists differ in length"
    accepting: DynArray[uint256, MAX_VALIDATORS] = []
    for i: uint256 in range(len(attesters), bound=MAX_VALIDATORS):
        assert self.is_validator[attesters[i]], "attestation by a non-validator"
        for j: uint256 in range(i + 1, len(attesters), bound=MAX_VALIDATORS):
            assert attesters[j] != attesters[i], "validator attested twice"
        if accepts[i]:
            accepting.append(qualities[i])
    accepted: bool = len(accepting) >= self.quorum
    quality: uint256 = 0
    minted: uint256 = 0
    if accepted:
        quality = self._median(accepting)
        total: uint256 = 0
        for w: uint256 in weights:
            total += w
        for i: uint256 in range(len(survivors), bound=MAX_CLIENTS):
            assert self.is_client[survivors[i]], "survivor is not a client"
            reward: uint256 = self.reward_per_round * weights[i] * quality // (total * PPM)
            self._mint(survivors[i], reward)
            minted += reward
    for c: address in rejected:
        assert self.is_client[c], "rejected is not a client"
        self._burn_floor(c, self.penalty_invalid)
    for c: address in dropouts:
        assert self.is_client[c], "dropout is not a client"
        self._burn_floor(c, self.penalty_dropout)
    for v: address in attesters:
        self._mint(v, self.validator_reward)
    log RoundSettled(round=round, header_hash=header_hash, closed=True, accepted=accepted,
                     quality_ppm=quality, minted=minted)


# --- ERC-20 transfers -------------------------------------------------------------------


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=msg.sender, receiver=receiver, value=amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    self.allowance[sender][msg.sender] -= amount
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log Transfer(sender=sender, receiver=receiver, value=amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log Approval(owner=msg.sender, spender=spender, value=amount)
    return True
