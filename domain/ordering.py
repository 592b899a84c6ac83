"""Per-key ordering (`sequential_by`): the key of a message, its partition, and the checks.

A handler declared with `sequential_by="account_id"` (a field of every message it handles)
or `sequential_by=True` (the aggregate id: the message's stream) handles the messages of one
key one at a time, in the order they were published, and different keys in parallel.

This module is the pure part: which key a message has, which of the handler's partition
queues that key goes to (a stable hash, the same in every process and on every machine:
never Python's salted `hash()`), and the registration checks. The sequencing and the apply
guard live in outbox/ordering.py and tasks/ordering.py.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from tidings.domain.registry import handler_targets

if TYPE_CHECKING:
    from tidings.domain.envelope import Message
    from tidings.domain.handlers import ElementClass
    from tidings.domain.naming import Names

# Partition queues per sequential handler. Fixed, because a key's partition must not move
# while its messages are queued: changing it is a deploy with drained partition queues.
PARTITIONS = 8
LONGEST_KEY = 255


def sequential_by(handler: ElementClass) -> str | bool | None:
    """The handler's `sequential_by` option: a field name, True (the stream), or None."""
    value = handler.meta_.get("sequential_by")
    return value if value else None


def key_of(by: str | bool, message: Message) -> str:
    """The ordering key of `message` for a handler `sequential_by=by`: the stream for True,
    else the field's value as text (a missing or null value is the key "", one order). A key
    longer than 255 characters is `#` and its BLAKE2b digest."""
    key = message.stream if by is True else _text(message.data.get(str(by)))
    # the numbering stores keys of up to 255 characters: a longer one stands for its digest
    return key if len(key) <= LONGEST_KEY else "#" + hashlib.blake2b(key.encode(), digest_size=32).hexdigest()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    """The partition of `key`: the first 8 bytes of its BLAKE2b digest, modulo `partitions`.
    Stable across processes, machines and Python versions (a salted `hash()` is not)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def partition_queue(queue: str, partition: int) -> str:
    """`<queue>.p<i>`: one of a sequential handler's partition queues."""
    return f"{queue}.p{partition}"


def partition_queues(queue: str, partitions: int = PARTITIONS) -> list[str]:
    """Every partition queue of a sequential handler whose own queue is `queue`."""
    return [partition_queue(queue, i) for i in range(partitions)]


def check_sequential_by(names: Names, handler: ElementClass, subscription: Any | None) -> list[str]:
    """Problems with a handler's `sequential_by`: its type, a field that some handled message
    lacks, and the options it cannot be combined with (`subscription`: its resolved settings)."""
    by = handler.meta_.get("sequential_by")
    if by is None or by is False:
        return []
    where = f"{handler.__name__}: sequential_by"
    if not (by is True or (isinstance(by, str) and by.strip())):
        return [
            f"{where} must be a message field name or True (the aggregate id), got {by!r}; "
            f'write sequential_by="<field>" or sequential_by=True'
        ]
    problems = []
    if isinstance(by, str):
        for cls in _handled_classes(names, handler):
            fields = sorted(getattr(cls, "model_fields", {}))
            if by not in fields:
                problems.append(
                    f"{where} {by!r} is not a field of {cls.__name__} (its fields: "
                    f"{', '.join(fields) or 'none'}); name a field every message it handles has, "
                    f"or write sequential_by=True to order by the aggregate id (the stream)"
                )
    if subscription is not None and subscription.values.get("batch_delivery"):
        problems.append(
            f"{where} cannot be combined with batch_delivery (a pack's failed message is retried "
            f"alone, behind its successors); turn batch_delivery off for {handler.__name__}"
        )
    return problems


def _handled_classes(names: Names, handler: ElementClass) -> list[type]:
    """The registered event/command classes the handler's `@handle` targets name (a type
    string or `"$any"` names no class to check: the key is read at run time)."""
    found: list[type] = []
    for target in handler_targets(handler):
        if isinstance(target, str):
            for kind in ("event", "command"):
                cls = names.registry[kind].get(target)
                if cls is not None:
                    found.append(cls)
        else:
            found.append(target)
    return found
