"""Export and import of a session as JSON Lines: a user takes their memory out, or brings it in.

The file, one JSON object a line, each with a ``sum`` (a digest of the line's other fields)::

    {"format": "optimem-session", "version": 1, "session": ..., "curve": {...}, "keep_source": ...,
     "family": ..., "turns": N, "sum": ...}                                     the header
    {"turn": 0, "role": "user", "content": "...", "time": "...Z", "sum": ...}   every turn, in order
    {"turn": 7, ..., "read_back": [{"page": 0, "tier": "mosaic4"}], ...}       forget-for-real: what memory
                                                                                still holds, read back
    {"turn": 9, "role": ..., "content": "", "time": ..., "forgotten": true}     forgotten on request: a marker
    {"end": true, "turns": N, "sum": ...}                                       the trailer

Why a digest on every line and a trailer: an import must refuse a file cut short (no trailer, or a
last line that is not JSON) or edited by hand (a line's digest no longer matches, a turn number
out of order) and name the line, so the user knows what is wrong with it.

Why validate the whole file before writing anything: an import either builds the whole session or
leaves nothing. The body is spooled to a temporary file while each line is checked, so memory
holds one line and one chunk, never the file; only a file that passed every check is replayed,
through the normal append path (``Memory.append``, 1,000 turns a call), so the pages it seals are
the pages the session had (rendering is deterministic); each chunk goes in while the one before it
is typeset, and that one is sealed before the next goes in, so at most two chunks wait as text and
no seal backlog is typeset (and held) at once. A forgotten turn's marker is
appended as a placeholder and forgotten again at the end (its pages then differ from the
original's: those were typeset with the text later painted over). Should the replay itself fail
(Redis gone), the session it created is deleted again. A process killed during it cannot clean up:
the session says ``importing`` (its meta holds the import's latest sign of life, renewed every
chunk), and an import of the same id replaces it once that is older than ``STALE_IMPORT_S``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from optimem.errors import BadRequest, NotFound, SessionExists
from optimem.memory import turns as turn_input
from optimem.memory.recall import fragments_from_decoded, headers_of
from optimem.memory.store import SessionKeys

FORMAT = "optimem-session"
VERSION = 1
CHUNK = 1000                 # turns a read or an append at a time (Memory.append takes at most 1,000)
# An import that has not renewed its sign of life for this long is dead (a chunk takes ~1-2 s, ten
# under heavy load): its partial session gives way to a new import of the same id.
STALE_IMPORT_S = 120.0
log = logging.getLogger("optimem.transfer")
MAX_LINE_BYTES_FLOOR = 1 << 20
FADED = "\u2026"             # what a turn memory holds no text of is imported as (turn numbers stay)
TURN_FIELDS = {"turn", "role", "content", "time", "read_back", "forgotten"}
HEADER_FIELDS = {"format", "version", "session", "curve", "keep_source", "family", "turns", "created"}


class TransferError(BadRequest):
    """An import file that can't be imported; the message names the line."""

    def __init__(self, line: int, what: str):
        self.line = line
        super().__init__(f"line {line}: {what}")


# -- lines ------------------------------------------------------------------------------------------
def _digest(body: str) -> str:
    return hashlib.blake2b(body.encode(), digest_size=8).hexdigest()


def _canonical(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def line(obj: dict[str, Any]) -> bytes:
    """One line of the file: the object, with ``sum`` the digest of its canonical JSON."""
    body = _canonical(obj)
    return (body[:-1] + ("," if len(body) > 2 else "") + f'"sum":"{_digest(body)}"}}\n').encode()


def parse_line(raw: bytes, number: int) -> dict[str, Any]:
    """A line read back: JSON, an object, its digest intact; else ``TransferError`` naming it."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransferError(number, f"not JSON ({getattr(exc, 'msg', exc)}): the file is cut short "
                                    "or was edited") from None
    if not isinstance(obj, dict):
        raise TransferError(number, "not a JSON object")
    given = obj.pop("sum", None)
    if given != _digest(_canonical(obj)):
        raise TransferError(number, "its checksum does not match its content: the line was edited "
                                    "(import only files optimem exported, unchanged)")
    return obj


# -- export ---------------------------------------------------------------------------------------
def export(memory, session: str, *, tenant: str) -> Iterator[bytes]:
    """The session as lines of JSON (bytes, each ending in a newline). The session is looked up
    here, before the first line is asked for, so a missing one raises ``NotFound`` at the call;
    the lines are then made ``CHUNK`` turns at a time: memory holds a chunk, never the session.
    Turns appended after the call are not in the file."""
    info = memory.session(session, tenant=tenant)
    header = {"format": FORMAT, "version": VERSION, "session": info.id, "curve": info.curve,
              "keep_source": info.keep_source, "family": info.family, "turns": info.turns,
              "created": info.created}

    forgotten = memory.forgotten(session, tenant=tenant)

    def lines() -> Iterator[bytes]:
        yield line(header)
        for first in range(0, info.turns, CHUNK):
            wanted = list(range(first, min(info.turns, first + CHUNK)))
            kept = memory.sources(session, wanted, tenant=tenant)
            read = _read_back(memory, session, tenant, [n for n in wanted if n not in kept])
            for n in wanted:
                made = _turn(n, kept.get(n), read.get(n))
                if n in forgotten:   # a marker: the number, role and time the turn keeps
                    made = {"turn": n, "role": made["role"], "content": "", "time": made["time"], "forgotten": True}
                yield line(made)
        yield line({"end": True, "turns": info.turns})

    return lines()


def _turn(n: int, kept: dict | None, read: dict | None) -> dict[str, Any]:
    if kept is not None:
        return {"turn": n, "role": kept["role"], "content": kept["content"], "time": kept["time"]}
    if read is None:
        raise NotFound(f"turn {n} is neither text nor on a page (the session changed during export)")
    return {"turn": n, "role": read["role"], "content": "\n".join(t for t in read["texts"] if t),
            "time": read["time"], "read_back": read["pages"]}


def _read_back(memory, session: str, tenant: str, turns: list[int]) -> dict[int, dict]:
    """Forget-for-real: sealed turns' text as their pages read back now, each page at the tier it
    has (a cached read is reused; a page not read yet is read here: seconds a page on a CPU).
    Per turn: its role, time, the texts of its pieces and the pages (with tiers) they are on."""
    if not turns:
        return {}
    k = SessionKeys(tenant, session)
    wanted: set[int] = set(turns)
    out: dict[int, dict] = {}
    for record in memory.store.pages_holding(k, turns):
        tier = memory._tier_now(k, record.page)
        decoded = None if tier.gone else memory.reader.decoded(k, record.page, tier)
        spans = [s for s in record.turns if s["index"] in wanted]
        for f in fragments_from_decoded(spans, decoded, headers_of(memory.store, k, record.page),
                                        record.page, tier.name, 0):
            got = out.setdefault(f.turn, {"role": f.role, "time": f.time, "texts": [], "pages": []})
            got["texts"].append(f.decoded)
            got["pages"].append({"page": record.page, "tier": tier.name})
    return out


# -- import ---------------------------------------------------------------------------------------
@dataclass
class Checked:
    """A file that passed every check, spooled on disk: its header and its turn count."""
    header: dict[str, Any]
    turns: int
    spool: IO[bytes]

    def close(self) -> None:
        self.spool.close()


class Checker:
    """Takes the file in pieces (``feed``), checks each line as it completes and spools it to a
    temporary file; ``finish`` says whether the file was whole. Memory holds one line at most
    (``max_line`` bytes, past which the file is refused)."""

    def __init__(self, memory, directory: str | None = None):
        self.memory = memory
        self.max_line = max(MAX_LINE_BYTES_FLOOR, 8 * memory.settings.max_turn_chars)
        self.spool = tempfile.TemporaryFile(dir=directory)
        self.pending = b""
        self.number = 0          # lines seen
        self.header: dict[str, Any] | None = None
        self.turns = 0
        self.ended = False

    def feed(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        at = 0
        while (cut := buffer.find(b"\n", at)) >= 0:
            self._line(buffer[at:cut])
            at = cut + 1
        self.pending = buffer[at:]
        if len(self.pending) > self.max_line:
            raise TransferError(self.number + 1, f"longer than {self.max_line} bytes")

    def _line(self, raw: bytes) -> None:
        self.number += 1
        n = self.number
        if not raw.strip():
            raise TransferError(n, "empty")
        if self.ended:
            raise TransferError(n, "comes after the last line")
        obj = parse_line(raw, n)
        if self.header is None:
            self.header = _header(obj, n, self.memory)
        elif obj.get("end") is True:
            if obj.get("turns") != self.turns or set(obj) != {"end", "turns"}:
                raise TransferError(n, f"the last line counts {obj.get('turns')!r} turns; the file holds "
                                       f"{self.turns}")
            if self.turns != self.header["turns"]:
                raise TransferError(n, f"the header announced {self.header['turns']} turns; the file holds "
                                       f"{self.turns}")
            self.ended = True
        else:
            self._turn(obj, n)
        self.spool.write(raw + b"\n")

    def _turn(self, obj: dict[str, Any], n: int) -> None:
        if obj.get("turn") != self.turns:
            raise TransferError(n, f"expected turn {self.turns}, got {obj.get('turn')!r} (lines out of order "
                                   "or missing)")
        extra = set(obj) - TURN_FIELDS
        if extra:
            raise TransferError(n, f"unknown fields {sorted(extra)}")
        try:
            turn_input.parse_turn(_appended(obj), self.turns, self.memory.settings.max_turn_chars,
                                  self.memory.settings.tokenizer, count=False)
        except BadRequest as exc:
            raise TransferError(n, str(exc).replace(f"turns[{self.turns}]", "turn")) from None
        self.turns += 1

    def finish(self) -> Checked:
        if self.pending.strip():
            self._line(self.pending)     # a last line without its newline is still a line
            self.pending = b""
        if self.header is None:
            raise TransferError(1, "the file is empty")
        if not self.ended:
            raise TransferError(self.number + 1, f"missing: the file ends after {self.turns} of "
                                                 f"{self.header['turns']} turns, without its last line "
                                                 "(cut short?)")
        self.spool.seek(0)
        return Checked(self.header, self.turns, self.spool)

    def close(self) -> None:
        self.spool.close()


def _header(obj: dict[str, Any], n: int, memory) -> dict[str, Any]:
    if obj.get("format") != FORMAT:
        raise TransferError(n, f"not an optimem export (the first line's format is {obj.get('format')!r})")
    if obj.get("version") != VERSION:
        raise TransferError(n, f"format version {obj.get('version')!r}; this optimem reads version {VERSION}")
    missing = {"curve", "keep_source", "turns"} - set(obj)
    if missing or set(obj) - HEADER_FIELDS:
        raise TransferError(n, f"the header lacks {sorted(missing)}" if missing
                            else f"unknown header fields {sorted(set(obj) - HEADER_FIELDS)}")
    if not isinstance(obj["keep_source"], bool) or not isinstance(obj["turns"], int) or obj["turns"] < 0:
        raise TransferError(n, "keep_source must be true or false and turns a count")
    try:
        memory.curve(obj["curve"])
    except BadRequest as exc:
        raise TransferError(n, f"curve: {exc}") from None
    return obj


def _appended(obj: dict[str, Any]) -> dict[str, Any]:
    """The turn as ``Memory.append`` takes it (a turn memory holds no text of: a placeholder)."""
    content = obj.get("content")
    if (obj.get("read_back") is not None or obj.get("forgotten") is True) and isinstance(content, str) \
            and not content.strip():
        content = FADED
    return {"role": obj.get("role"), "content": content, "time": obj.get("time")}


def check(memory, chunks: Iterable[bytes], directory: str | None = None) -> Checked:
    """Check a whole file given in pieces; the checked file, spooled (close it when done)."""
    checker = Checker(memory, directory)
    try:
        for chunk in chunks:
            checker.feed(chunk)
        return checker.finish()
    except BaseException:
        checker.close()
        raise


def replay(memory, checked: Checked, session: str | None = None, *, tenant: str,
           progress: Callable[[int], None] | None = None):
    """Build the session a checked file holds (``session``: its id, else the file's), through the
    normal append path; ``progress(n)`` after every chunk of ``n`` turns. ``SessionExists`` when the
    id is taken. A failure part way deletes the session again, so nothing is half-imported."""
    header = checked.header
    sid = session or header.get("session")
    _create(memory, sid, header, tenant)
    k = memory.keys(sid, tenant)
    try:
        memory.store.import_alive(k, time.time())
        chunk: list[dict[str, Any]] = []
        forgotten: list[int] = []
        owed = 0            # the seal the last chunk asked for
        for raw in checked.spool:
            obj = json.loads(raw)
            if "turn" not in obj:
                continue
            if obj.get("forgotten") is True:
                forgotten.append(obj["turn"])
            chunk.append(_appended(obj))
            if len(chunk) == CHUNK:
                memory.append(sid, chunk, tenant=tenant)
                # This chunk is appended while the last one is typeset (two cores at work), then the
                # last one's pages are waited for: a deeper backlog would typeset (and hold) it all at once.
                memory.settle(sid, tenant=tenant, asked=owed)
                owed = memory.seals_asked(sid, tenant=tenant)
                memory.store.import_alive(k, time.time())
                if progress:
                    progress(len(chunk))
                chunk = []
        if chunk:
            memory.append(sid, chunk, tenant=tenant)
            if progress:
                progress(len(chunk))
        memory.settle(sid, tenant=tenant)
        for first, last in _runs(forgotten):     # a marker was appended as a placeholder: forget it
            memory.forget(sid, first, last, tenant=tenant)
        memory.store.import_alive(k, None)
    except BaseException:
        try:
            memory.delete_session(sid, tenant=tenant)
        except Exception:  # noqa: BLE001  the store is what failed; the error below says so
            pass
        raise
    return memory.session(sid, tenant=tenant)


def _create(memory, sid: str | None, header: dict[str, Any], tenant: str) -> None:
    """The session an import builds; one left part way by an import that died gives way to it."""
    try:
        memory.create_session(sid, curve=header["curve"], keep_source=header["keep_source"], tenant=tenant)
        return
    except SessionExists:
        left = memory.store.meta(memory.keys(sid, tenant)).importing
        if left is None or time.time() - left < STALE_IMPORT_S:
            raise
    log.warning("session %r was left part way by an import that stopped %.0f s ago; importing it again",
                sid, time.time() - left)
    memory.delete_session(sid, tenant=tenant)
    memory.create_session(sid, curve=header["curve"], keep_source=header["keep_source"], tenant=tenant)


def _runs(turns: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs of sorted turn numbers, as (first, last)."""
    runs: list[list[int]] = []
    for n in turns:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ((first, last) for first, last in runs)


def import_file(memory, path: str | os.PathLike, session: str | None = None, *, tenant: str,
                progress: Callable[[int], None] | None = None):
    """Check, then import, a file on disk."""
    with open(path, "rb") as f:
        checked = check(memory, iter(lambda: f.read(1 << 16), b""))
    try:
        return replay(memory, checked, session, tenant=tenant, progress=progress)
    finally:
        checked.close()
