"""The hospital's ClientApp (Flower 1.42 Message API): one handler per protocol stage
(masking's five and ``join``, and ``encrypt``, the one stage of a Paillier or CKKS round).

Flower starts a fresh ``flwr-clientapp`` process for every message, so the hospital is
loaded from the SuperNode's node config each time (:meth:`Hospital.from_node_config`) and
the round's secrets are kept between stages in ``Context.state``, which stays with the
hospital's own SuperNode. A handler that raises leaves that state untouched, and Flower
returns an error reply naming the exception to the ServerApp, which counts the hospital
as a dropout of the stage.
"""
from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from ..rounds.errors import StageMessageError
from ..rounds.hospital import Hospital
from ..rounds.stages import MESSAGE_TYPES, RECORD

STATE = "bfl-round"
"""Name of the ConfigRecord in ``Context.state`` holding the open round's state."""

app = ClientApp()


def handle(stage: str, message: Message, context: Context) -> Message:
    """Answer ``message`` as this node's hospital; the reply carries one ConfigRecord."""
    content = message.content
    if RECORD not in content or not isinstance(content[RECORD], ConfigRecord):
        raise StageMessageError(f"{message.metadata.message_type} message has no {RECORD!r} ConfigRecord")
    fields = dict(content[RECORD])
    if fields.get("stage") != stage:
        raise StageMessageError(f"{MESSAGE_TYPES[stage]} message carries stage {fields.get('stage')!r}")
    hospital = Hospital.from_node_config(context.node_config)
    saved = context.state[STATE]["state"] if STATE in context.state else None
    if saved is not None and not isinstance(saved, bytes):
        raise StageMessageError(f"the saved round state in Context.state is {type(saved).__name__}, not bytes")
    reply, state = hospital.handle(fields, saved)
    if state is None:
        if STATE in context.state:
            del context.state[STATE]
    else:
        context.state[STATE] = ConfigRecord({"state": state})
    return Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=message)


@app.train("advertise")
def advertise(message: Message, context: Context) -> Message:
    """Check the round opening and beacon, DP-SGD on the hospital's records (the input waits
    in Context.state), then the round's signed public keys."""
    return handle("advertise", message, context)


@app.train("join")
def join(message: Message, context: Context) -> Message:
    """The first stage of a round for which this hospital advertised keys ahead: the
    opening's checks and DP-SGD as at ``advertise``, then its shares."""
    return handle("join", message, context)


@app.query("share")
def share(message: Message, context: Context) -> Message:
    return handle("share", message, context)


@app.query("mask")
def mask(message: Message, context: Context) -> Message:
    """The masked input trained at ``advertise`` and its signed submission."""
    return handle("mask", message, context)


@app.train("encrypt")
def encrypt(message: Message, context: Context) -> Message:
    """A Paillier or CKKS round: DP-SGD, then the update encrypted under the key holder's
    public key, and the signed submission."""
    return handle("encrypt", message, context)


@app.query("acknowledge")
def acknowledge(message: Message, context: Context) -> Message:
    return handle("acknowledge", message, context)


@app.query("unmask")
def unmask(message: Message, context: Context) -> Message:
    return handle("unmask", message, context)
