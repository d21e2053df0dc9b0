"""Continuous queries brought back after a 1.x hot restore.

`influxd restore -portable` (1.6) restores databases, retention policies and shards, but no
continuous query, although the backup's meta holds them (store/scanners.py,
portable_meta_cqs): every 1.x hot restore (and `--database` from a cold archive, which goes
through the tool too) re-creates them from the restored backup's meta, by the statement influxd
stored (`CREATE CONTINUOUS QUERY ... END`, its INTO and FROM normalized to name their database).
A restore `--as NEWNAME` re-creates a query of the database only where its text names no
database but that one (rewritten to NEWNAME); one that reads or writes another is not
re-created, and said so: rewriting only part of it would make a different query. A query that
fails to re-create, or is not re-created, is a warning naming it, never a silent loss.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from influx_backupd.core.atomic import read_small
from influx_backupd.core.interrupt import Interrupted
from influx_backupd.core.log import Logger
from influx_backupd.influxd.influxql import ident
from influx_backupd.restore.merge import manifest_of
from influx_backupd.store.scanners import portable_meta_cqs


@dataclass(frozen=True)
class ContinuousQuery:
    database: str
    name: str
    statement: str  # the whole CREATE CONTINUOUS QUERY statement

    @property
    def label(self) -> str:
        return f"{self.name} ON {self.database}"


@dataclass
class CqsRestored:
    """What a restore did with continuous queries; summary() goes into its JSON."""

    recreated: list[str] = field(default_factory=list)  # labels: "NAME ON DB"
    not_recreated: dict[str, str] = field(default_factory=dict)  # label: why
    warnings: list[str] = field(default_factory=list)

    def skip(self, label: str, why: str, logger: Logger) -> None:
        self.not_recreated[label] = why
        self.warnings.append(f"continuous query {label} not re-created: {why}")
        logger.warning("restore.cq_not_recreated", cq=label, why=why)

    def summary(self) -> dict[str, Any]:
        return {"recreated": self.recreated, "not_recreated": self.not_recreated}


def meta_file(directory: Path) -> Path:
    """A 1.x portable backup dir's .meta file, as its manifest names it. Raises ValueError."""
    _, manifest = manifest_of(directory)
    try:
        return directory / str(manifest["meta"]["fileName"])
    except (KeyError, TypeError):
        raise ValueError(f"{directory}: its manifest names no meta file") from None


def backup_cqs(directory: Path) -> list[ContinuousQuery]:
    """The continuous queries of a 1.x portable backup dir's meta. Raises ValueError/OSError."""
    return [ContinuousQuery(*cq) for cq in portable_meta_cqs(read_small(meta_file(directory)))]


def server_cqs(series: list[dict[str, Any]]) -> list[ContinuousQuery]:
    """SHOW CONTINUOUS QUERIES' answer (one series per database: name, query)."""
    return [
        ContinuousQuery(str(s.get("name")), str(row[0]), str(row[1]))
        for s in series
        for row in s.get("values") or []
    ]


def bring_back(
    directory: Path,
    run: Callable[[str], object],
    logger: Logger,
    *,
    databases: dict[str, str] | None = None,
    live: list[ContinuousQuery] | None = None,
    into: CqsRestored | None = None,
) -> CqsRestored:
    """Create the continuous queries of the portable backup dir's meta again by run(statement).
    databases: only those of these databases, each restored as the name it maps to (None: all,
    as they were). live: the live server's before a whole-server restore (left_behind).
    Says what it did into `into` (a new CqsRestored if None), which it returns."""
    done = into if into is not None else CqsRestored()
    try:
        cqs = backup_cqs(directory)
    except (OSError, ValueError) as exc:
        unread = f"the backup's meta in {directory} could not be read ({exc})"
        done.warnings.append(f"continuous queries not re-created: {unread}")
        logger.warning("restore.cqs_unread", why=unread)
        cqs = []
    for cq in cqs:
        if databases is not None and cq.database not in databases:
            continue
        new = cq.database if databases is None else databases[cq.database]
        statement, why = renamed(cq, new)
        if statement is None:
            done.skip(cq.label, str(why), logger)
            continue
        label = ContinuousQuery(new, cq.name, statement).label
        try:
            run(statement)
        except Interrupted:
            raise
        except Exception as exc:  # the restore stands; the operator is told which and why
            done.skip(label, f"influxd refused it ({exc}); its definition: {statement}", logger)
            continue
        done.recreated.append(label)
        logger.info("restore.cq_recreated", cq=label)
    if live is not None:
        left_behind(live, cqs, done, logger)
    return done


def left_behind(
    live: list[ContinuousQuery], restored: list[ContinuousQuery], done: CqsRestored, logger: Logger
) -> None:
    """The live server's continuous queries a whole-server restore does not bring back (not in
    the backup, or defined otherwise there): warnings naming each with its definition, which
    is also kept in the rollback dirs' meta."""
    kept = {(cq.database, cq.name): cq.statement for cq in restored}
    for cq in live:
        backup = kept.get((cq.database, cq.name))
        if backup == cq.statement:
            continue
        why = "not in the backup" if backup is None else "defined otherwise in the backup"
        runs = "none by that name" if backup is None else "the backup's definition"
        line = (
            f"the live server's continuous query {cq.label} is {why}: the restored server "
            f"runs {runs} (the live one was: {cq.statement})"
        )
        done.warnings.append(line)
        logger.warning("restore.live_cq_not_kept", cq=cq.label, why=why, statement=cq.statement)


# -- the rename -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<quoted>"(?:\\.|[^"\\])*")
    |(?P<string>'(?:\\.|[^'\\])*')
    |(?P<word>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<number>[0-9][0-9A-Za-z_.µ]*)
    |(?P<regex>/(?:\\.|[^/\\])*/)
    |(?P<other>=~|!~|<>|!=|<=|>=|::|.)""",
    re.VERBOSE | re.DOTALL,
)
_OPERANDS = {"quoted", "string", "word", "number", "regex"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int  # where in the statement

    @property
    def name(self) -> str | None:
        """The identifier this token is (None: not one)."""
        if self.kind == "word":
            return self.text
        if self.kind == "quoted":
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        return None


def _tokens(text: str) -> Iterator[_Token]:
    """InfluxQL tokens, spaces left out. A `/` after an operand divides; elsewhere it opens a
    regex (InfluxQL has no unary `/`). Raises ValueError where the text does not tokenize."""
    pos, previous = 0, ""
    while pos < len(text):
        found = _TOKEN.match(text, pos)
        if found is None or found.lastgroup is None:
            raise ValueError(f"cannot read the text at {pos}")
        kind, token = found.lastgroup, found.group()
        if kind == "regex" and (previous in _OPERANDS or previous == ")"):
            kind, token = "other", "/"
        if kind != "space":
            yield _Token(kind, token, pos)
            previous = kind if kind != "other" else token
        pos += len(token)


def _sources(tokens: list[_Token], i: int, many: bool) -> Iterator[list[int | None]]:
    """Each source named from tokens[i] on (INTO: one; FROM: a comma-separated list, whose
    subqueries the caller's scan meets on its own): its segments' token indexes, None for an
    empty one (`db..m`)."""
    while i < len(tokens):
        if tokens[i].text == "(":  # a subquery: skip to its end
            depth = 0
            while i < len(tokens):
                depth += {"(": 1, ")": -1}.get(tokens[i].text, 0)
                i += 1
                if depth == 0:
                    break
        else:
            path: list[int | None] = []
            while True:
                if i < len(tokens) and tokens[i].text not in (".", ",", ")"):
                    path.append(i)
                    i += 1
                else:
                    path.append(None)
                if i < len(tokens) and tokens[i].text == ".":
                    i += 1
                    continue
                break
            yield path
        if not many or i >= len(tokens) or tokens[i].text != ",":
            return
        i += 1


def renamed(cq: ContinuousQuery, new: str) -> tuple[str | None, str | None]:
    """cq's statement for its database restored as new, or None and why it cannot be.

    Whatever the name, the text is run on the live server only as what it says it is: one
    CREATE CONTINUOUS QUERY ... ON its own database, no `;` and a second statement after it
    (the meta is the backup's: a tampered one must not drop a database by way of a CQ)."""
    try:
        tokens = list(_tokens(cq.statement))
    except ValueError as exc:
        return None, f"its text could not be read ({exc}): {cq.statement}"
    words = [t.text.upper() for t in tokens[:5]]
    if words[:3] != ["CREATE", "CONTINUOUS", "QUERY"] or words[4:5] != ["ON"]:
        return None, f"its text is not a CREATE CONTINUOUS QUERY ... ON statement: {cq.statement}"
    if len(tokens) < 6 or tokens[5].name != cq.database:
        return None, f"its text does not say ON {cq.database}: {cq.statement}"
    if any(t.kind == "other" and t.text == ";" for t in tokens):
        return None, f"its text holds more than one statement: {cq.statement}"
    if new == cq.database:
        return cq.statement, None
    swap = [tokens[5]]
    others: set[str] = set()
    for i, token in enumerate(tokens):
        if token.kind != "word" or token.text.upper() not in ("INTO", "FROM"):
            continue
        for path in _sources(tokens, i + 1, many=token.text.upper() == "FROM"):
            if len(path) < 3 or path[0] is None:
                continue  # no database named: the ON one
            named = tokens[path[0]]
            if named.name == cq.database:
                swap.append(named)
            else:
                others.add(str(named.name or named.text))
    if others:
        return None, (
            f"it names database {', '.join(sorted(others))} besides {cq.database}, so "
            f"re-created under {new} it would not be the backup's query (create it by hand "
            f"if wanted: {cq.statement})"
        )
    text = cq.statement
    for token in sorted(swap, key=lambda t: t.start, reverse=True):
        text = text[: token.start] + ident(new) + text[token.start + len(token.text) :]
    return text, None
