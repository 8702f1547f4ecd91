"""What a user's request to erase does: every session of a tenant at once, or one turn for real.

Forgetting a turn takes its text out of everything the store keeps (``forget_turns``), then has
Redis rewrite its files (``FileRewrite``): until the append-only file is rewritten it still holds
the writes that put the text there, and a snapshot (RDB) taken before holds it too.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import redis
from redis.cluster import RedisCluster

from optimem.errors import NotFound
from optimem.memory import index as ix, vectors

log = logging.getLogger("optimem.erasure")

ROUNDS = 5   # sessions created while a delete runs are deleted in another round, a few times at most


def delete_tenant(memory, tenant: str) -> int:
    """Delete every session of ``tenant`` (only its keys: each session's keys carry the tenant in
    their hash tag) and return how many were deleted. Sessions another caller creates meanwhile
    are caught by the next round; one created after the last round stays."""
    deleted = 0
    for _ in range(ROUNDS):
        sessions = memory.sessions(tenant=tenant)
        if not sessions:
            break
        for session in sessions:
            try:
                memory.delete_session(session, tenant=tenant)
                deleted += 1
            except NotFound:   # deleted by someone else meanwhile
                pass
    return deleted


# -- forgetting one turn for real -------------------------------------------------------------------
MAX_TURNS = 10_000      # turns one forget may span
REWRITE_EVERY_S = 1.0   # a burst of forgets shares one rewrite of the Redis files, started at most this late
REWRITE_GIVE_UP_S = 600  # a rewrite Redis keeps busy with another one this long is left to the next forget


def blank_lines(png: bytes, boxes: list[tuple[int, int, int, int]]) -> bytes:
    """The page with these line boxes painted over in the page's white: a box holds all the ink of
    its line (``renderer`` grows ink boxes by a pad, never into another line's), so nothing of
    that text is left in the pixels. Saved as the typesetter saves a page (same zlib level)."""
    import io

    from PIL import Image, ImageDraw

    from optimem.renderer.typeset import PNG_LEVEL

    image = Image.open(io.BytesIO(png))
    image.load()
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_LEVEL)
    return out.getvalue()


def forget_turns(store, k, turns: list[int], keep_source: bool, caches) -> list[int]:
    """Take the text of ``turns`` (existing turn numbers of session ``k``) out of everything the
    store keeps, in one transaction, and return the pages that were changed:

    - the source (``source``) or the text turn (``turns``): content emptied, marked ``forgotten``;
      the turn keeps its number, role and time;
    - the text index: the turn's source document and what page reads gave of it;
    - each page holding it: its lines painted over in the PNG, their text left out of the line
      boxes; the page's decoded text, its visual tokens and those of its mosaic canvases, and the
      cached canvases, dropped; its read-ahead mark cleared (the next read reads the new pixels);
    - ``forgotten``: the turn numbers, for context and export.

    ``caches(page)``: the key prefixes of the page's cached canvases and canvas tokens. Guarded by
    WATCH on meta, the seal state, the text turns and the pages: a seal typeset from the old text
    can't commit after this (the seal state moves here), and a page sealed meanwhile is seen on
    the retry."""
    wanted = sorted(set(turns))

    def forget(p) -> list[int]:
        pages = store.pages_holding(k, wanted)     # read after WATCH: a change aborts the EXEC
        texts = dict(zip(wanted, p.hmget(k.turns, wanted)))
        sources = dict(zip(wanted, p.hmget(k.source, wanted))) if keep_source else {}
        docs = [ix.source_doc(n) for n in wanted] + [ix.page_doc(r.page, n) for r in pages for n in wanted
                                                       if any(s["index"] == n for s in r.turns)]
        entries = dict(zip(docs, p.hmget(ix.docs_key(k.tag), docs)))
        changed = []
        for record in pages:
            png = p.hget(k.png, record.page)
            lines = json.loads(p.hget(k.lines, record.page) or "[]")
            hidden = [line for line in lines if line[0] in wanted and line[3] != "header"]
            for line in hidden:
                line[2] = ""
            decoded = [f for f in p.hkeys(k.decoded) if _s(f).split(":", 1)[0] == str(record.page)]
            changed.append((record.page, blank_lines(png, [tuple(l[1]) for l in hidden]) if hidden else png,
                            lines, decoded))
        prefixes = tuple(prefix for record in pages for prefix in (f"{k.tag}:vt:{record.page}:", *caches(record.page)))
        cached = [key for key in (store._keys_with_prefix(k, f"{k.tag}:vt:") +
                                  store._keys_with_prefix(k, f"{k.tag}:canvas:") if pages else [])
                  if _s(key).startswith(prefixes)]
        p.multi()
        for n in wanted:
            if texts[n] is not None:
                t = json.loads(texts[n])
                p.hset(k.turns, n, json.dumps({**t, "content": "", "start": 0, "tokens": 0, "forgotten": True}))
                p.hincrby(k.meta, "text_tokens", -int(t.get("tokens", 0)))
            if sources.get(n) is not None:
                p.hset(k.source, n, json.dumps({**json.loads(sources[n]), "content": "", "forgotten": True}))
        ix.remove(p, k.tag, entries)
        for page, png, lines, decoded in changed:
            p.hset(k.png, page, png)
            p.hset(k.lines, page, json.dumps(lines))
            if decoded:
                p.hdel(k.decoded, *decoded)
            p.hdel(k.queued, page)
        if cached:
            p.delete(*cached)
        vectors.forget(p, k)           # recall's turn vectors were made from the old text
        p.sadd(k.forgotten, *wanted)
        p.hincrby(k.seal, "forgets", 1)      # a seal typeset from the old text now conflicts
        return [page for page, *_ in changed]

    if not store.r.exists(k.meta):
        raise NotFound(f"no session {k.session!r}")
    return store.r.transaction(forget, k.meta, k.seal, k.turns, k.pages, value_from_callable=True)


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FileRewrite:
    """Has Redis rewrite its files after a forget, off the request: BGREWRITEAOF (the append-only
    file is rebuilt from memory, so the old writes leave the disk) and, where snapshots are
    configured, BGSAVE SCHEDULE (the RDB file too). A rewrite starts at most ``REWRITE_EVERY_S``
    after the forget that asked for it, or as soon as one already running ends (a rewrite that
    began before the forget may still hold the text: it does not count). Forgets in a burst share
    one. A Redis that refuses (a managed one without these commands) is logged: its operator
    rewrites and snapshots (README)."""

    def __init__(self, r):
        self.r = r
        self._due = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        with self._lock:
            self._idle.clear()
            self._due.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="optimem-file-rewrite", daemon=True)
                self._thread.start()

    def wait(self, timeout_s: float = 60) -> bool:
        """Until every rewrite asked for has finished on the server (tests; before a backup)."""
        return self._idle.wait(timeout_s)

    def _loop(self) -> None:
        while True:
            if not self._due.wait(30):
                with self._lock:
                    if not self._due.is_set():
                        self._thread = None
                        return
                continue
            time.sleep(REWRITE_EVERY_S)
            self._due.clear()
            try:
                self._rewrite()
            except Exception:  # noqa: BLE001  never let the thread die; the next forget asks again
                log.exception("could not have Redis rewrite its files after a forget")
            with self._lock:
                if not self._due.is_set():
                    self._idle.set()

    def _rewrite(self) -> None:
        """BGREWRITEAOF, then (snapshots configured) BGSAVE, each waited for: a rewrite or save
        already running began before the forget, so ours starts after it."""
        if isinstance(self.r, RedisCluster):   # each node keeps its own files: the operator rewrites them
            log.warning("a turn was forgotten on a Redis Cluster: run BGREWRITEAOF (and BGSAVE) on every "
                        "primary and replica so their files drop the old writes")
            return
        deadline = time.monotonic() + REWRITE_GIVE_UP_S
        if int(self.r.info("persistence").get("aof_enabled", 0)):
            self._run(self.r.bgrewriteaof, "aof_rewrite_in_progress", deadline)
        if self.r.config_get("save").get("save"):
            self._run(self.r.bgsave, "rdb_bgsave_in_progress", deadline)

    def _run(self, start, running: str, deadline: float) -> None:
        def busy() -> bool:
            info = self.r.info("persistence")
            return bool(int(info.get(running, 0)) or int(info.get("aof_rewrite_scheduled", 0)))

        while True:
            try:
                while busy() and time.monotonic() < deadline:
                    time.sleep(0.05)
                start()
                break
            except redis.ResponseError as exc:
                if "in progress" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        while busy() and time.monotonic() < deadline:
            time.sleep(0.05)
