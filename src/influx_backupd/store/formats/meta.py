"""influxd 1.x's meta store (meta/meta.db, and the store inside a portable backup's .meta):
influxdb's meta.proto Data, as protobuf. Nothing checksums it: a changed byte left a restored
influxd that would not start ("proto: illegal tag 0"), or whose every query without a
retention policy failed ("retention policy not found"), while verify said ok.

Read: the framing of Data and the messages in it (databases, their retention policies, shard
groups, shards and owners, subscriptions, continuous queries; users and their privileges;
nodes), the fields meta.proto requires of each (influxd refuses to start without one: "proto:
required field "MaxShardID" not set"), every database and retention policy named, a
database's default retention policy one of its own (or none), no retention policy named twice
in a database."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import BinaryIO

from influx_backupd.store.formats.findings import Finding, Window
from influx_backupd.store.formats.protobuf import (
    Schema,
    embedded,
    fields_of,
    framing_problem,
    text_of,
)


@dataclass(frozen=True)
class _Message:
    """A message of meta.proto: its name, the fields it requires, the messages it holds."""

    name: str
    required: tuple[int, ...]
    holds: dict[int, _Message] = field(default_factory=dict)


_SHARD = _Message("ShardInfo", (1,), {3: _Message("ShardOwner", (1,))})
_POLICY = _Message(
    "RetentionPolicyInfo",
    (1, 2, 3, 4),
    {
        5: _Message("ShardGroupInfo", (1, 2, 3, 4), {5: _SHARD}),
        6: _Message("SubscriptionInfo", (1, 2)),
    },
)
_NODE = _Message("NodeInfo", ())  # its framing read, no field required of it here
# Data {4, 10, 11: NodeInfo; 5: DatabaseInfo {3: RetentionPolicyInfo {5: ShardGroupInfo
# {5: ShardInfo {3: ShardOwner}}, 6: SubscriptionInfo}, 4: ContinuousQueryInfo}; 6: UserInfo
# {4: UserPrivilege}}
_META = _Message(
    "Data",
    (1, 2, 3, 7, 8, 9),
    {
        4: _NODE,
        10: _NODE,
        11: _NODE,
        5: _Message(
            "DatabaseInfo", (1, 2), {3: _POLICY, 4: _Message("ContinuousQueryInfo", (1, 2))}
        ),
        6: _Message("UserInfo", (1, 2, 3), {4: _Message("UserPrivilege", (1, 2))}),
    },
)


def _framing(message: _Message) -> Schema:
    """The messages whose framing is read, as framing_problem takes them."""
    return {number: _framing(inner) for number, inner in message.holds.items()}


_DATA = _framing(_META)


def _missing(window: Window, start: int, end: int, message: _Message) -> str | None:
    """The first required field absent in the message from start to end, or in one inside."""
    present: set[int] = set()
    for number, value in fields_of(window, start, end):
        present.add(number)
        inner = message.holds.get(number)
        if inner is not None and isinstance(value, tuple):
            problem = _missing(window, *value, inner)
            if problem is not None:
                return problem
    absent = [n for n in message.required if n not in present]
    if absent:
        return f"a {message.name} at offset {start} lacks its field {absent[0]} (influxd needs it)"
    return None


# far past any meta store: it holds no series, only databases, policies, shards and users
MAX_META = 256 << 20


def check_meta_db(stream: BinaryIO, size: int, member: str) -> list[Finding]:
    if size > MAX_META:
        return [Finding("error", member, f"{size} bytes: more than a meta store may be")]
    problem = meta_store_problem(Window(stream, size), size)
    return [] if problem is None else [Finding("error", member, f"meta store: {problem}")]


def meta_problem(data: bytes) -> str | None:
    """meta_store_problem of a store held in memory (a portable backup's)."""
    return meta_store_problem(Window(io.BytesIO(data), len(data)), len(data))


def meta_store_problem(window: Window, size: int) -> str | None:
    """What influxd would not load or not serve of the meta store, or None."""
    if size == 0:
        return "empty"
    problem = framing_problem(window, 0, size, _DATA) or _missing(window, 0, size, _META)
    if problem is not None:
        return problem
    for start, end in embedded(window, 0, size, 5):
        name, default, policies = b"", b"", []
        for number, value in fields_of(window, start, end):
            if number == 1 and isinstance(value, tuple):
                name = text_of(window, value)
            elif number == 2 and isinstance(value, tuple):
                default = text_of(window, value)
            elif number == 3 and isinstance(value, tuple):
                policy = next(
                    (
                        text_of(window, v)
                        for n, v in fields_of(window, *value)
                        if n == 1 and isinstance(v, tuple)
                    ),
                    b"",
                )
                if not policy:
                    return f"a retention policy without a name at offset {value[0]}"
                policies.append(policy)
        if not name:
            return f"a database without a name at offset {start}"
        if len(set(policies)) != len(policies):
            return f"database {name[:64]!r} names a retention policy twice"
        if default and default not in policies:
            return (
                f"database {name[:64]!r}: its default retention policy {default[:64]!r} is none "
                f"of its own ({', '.join(repr(p[:64]) for p in policies) or 'none'})"
            )
    return None
