"""The memory service: the one object the API, the CLI, the lab and the proxy talk to.

It validates input (raising BadRequest/NotFound with a message that says what to fix), keeps turns,
seals pages, assembles context and answers recall. Model work goes through the job stream.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import renderer
from memory import compactor, context, curves, jobs, reading, recall as recalling, tokens
from memory.curves import Curve, CurveError
from memory.redis_server import EmbeddedRedis, connect
from memory.settings import Settings
from memory.store import NotFound, SessionKeys, Store, TurnRecord
from model import backends
from model.base import Backend
from model.tiers import Ladder, Tier, ladder as ladder_for

SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_TURNS_PER_CALL = 1000
RETIER_EVERY = 16  # turns; tiers are always computed exactly at read time, this only pre-reads


class BadRequest(ValueError):
    """The caller sent something we can't take; the message says what to fix."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def normalise_time(value: Any) -> str:
    if value is None or value == "":
        return now_iso()
    if not isinstance(value, str):
        raise BadRequest(f"turn time must be an ISO 8601 string, got {value!r}")
    try:
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"turn time {value!r} is not ISO 8601 (e.g. 2024-05-01T12:30:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Memory:
    def __init__(self, settings: Settings | None = None, backend: Backend | None = None):
        self.settings = settings or Settings.from_env()
        self._backend = backend
        self.ladder: Ladder = backend.ladder if backend else ladder_for(self.settings.family)
        self.layout = renderer.Layout(page_px=self.ladder.page_px, font_px=self.settings.font_px,
                                      line_spacing=self.settings.line_spacing)
        self.server: EmbeddedRedis | None = None
        self.store: Store | None = None
        self.worker: jobs.Worker | None = None
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._backend_lock = threading.Lock()

    # -- life cycle ---------------------------------------------------------------------------
    def open(self) -> "Memory":
        client, self.server = connect(self.settings.redis_url, self.settings.data_dir, self.settings.redis_maxmemory)
        self.store = Store(client)
        jobs.ensure_group(client)
        if self.settings.worker:
            self.worker = jobs.Worker(client, self.handle_job).start()
        return self

    def close(self, stop_server: bool = True) -> None:
        if self.worker:
            self.worker.stop()
            self.worker = None
        if self.server and stop_server:
            self.server.stop()

    def __enter__(self) -> "Memory":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backend(self) -> Backend:
        with self._backend_lock:
            if self._backend is None:
                s = self.settings
                self._backend = backends.load(s.backend, s.family, s.model_path, s.device, s.vllm_url)
            return self._backend

    # -- sessions -----------------------------------------------------------------------------
    def _keys(self, tenant: str, session: str) -> SessionKeys:
        if not isinstance(session, str) or not SESSION_ID.match(session):
            raise BadRequest("session id must be 1-128 characters of letters, digits, '.', '_' or '-'")
        return SessionKeys(tenant, session)

    def curve(self, spec: Any) -> Curve:
        try:
            return curves.load(spec, self.ladder)
        except CurveError as exc:
            raise BadRequest(f"invalid curve: {exc}") from None

    def create_session(self, tenant: str, session: str | None = None, curve: Any = None,
                       keep_source: bool = True) -> dict:
        session = session or base64.b32encode(os.urandom(10)).decode().lower()
        k = self._keys(tenant, session)
        loaded = self.curve(curve if curve is not None else self.settings.curve)
        if not self.store.create_session(k, loaded.to_json(), keep_source):
            raise BadRequest(f"session {session!r} already exists")
        return self.session_info(tenant, session)

    def session_info(self, tenant: str, session: str) -> dict:
        k = self._keys(tenant, session)
        meta = self.store.meta(k)
        unsealed_from, next_page = self.store.seal_state(k)
        return {"id": session, "created": float(meta["created"]), "curve": json.loads(meta["curve"]),
                "keep_source": meta["keep_source"] == "1", "turns": int(meta["next_turn"]),
                "pages": next_page, "text_turns_from": unsealed_from, "family": self.ladder.family}

    def list_sessions(self, tenant: str) -> list[str]:
        return self.store.sessions(tenant)

    def delete_session(self, tenant: str, session: str) -> None:
        k = self._keys(tenant, session)
        self.store.meta(k)
        self.store.delete_session(k)

    def set_curve(self, tenant: str, session: str, curve: Any) -> dict:
        k = self._keys(tenant, session)
        loaded = self.curve(curve)
        self.store.set_curve(k, loaded.to_json())
        self.retier(tenant, session)
        return self.session_info(tenant, session)

    def _session_curve(self, meta: dict) -> Curve:
        return curves.load(meta["curve"], self.ladder)

    # -- turns --------------------------------------------------------------------------------
    def _turn(self, raw: Any, position: int) -> TurnRecord:
        if not isinstance(raw, dict):
            raise BadRequest(f"turns[{position}] must be an object with 'role' and 'content'")
        role, content = raw.get("role"), raw.get("content")
        if not isinstance(role, str) or not role.strip() or len(role) > 64:
            raise BadRequest(f"turns[{position}].role must be a non-empty string of at most 64 characters")
        if not isinstance(content, str) or not content.strip():
            raise BadRequest(f"turns[{position}].content must be a non-empty string")
        if len(content) > self.settings.max_turn_chars:
            raise BadRequest(f"turns[{position}].content has {len(content)} characters; the limit is "
                             f"{self.settings.max_turn_chars} (OPTIMEM_MAX_TURN_CHARS)")
        time_ = normalise_time(raw.get("time"))
        count = tokens.turn_tokens(role, content, self.settings.tokenizer)
        return TurnRecord(index=-1, role=role.strip(), content=content, time=time_, tokens=count)

    def append(self, tenant: str, session: str, turns: list[Any]) -> dict:
        k = self._keys(tenant, session)
        if not isinstance(turns, list) or not turns:
            raise BadRequest("'turns' must be a non-empty list")
        if len(turns) > MAX_TURNS_PER_CALL:
            raise BadRequest(f"at most {MAX_TURNS_PER_CALL} turns per call, got {len(turns)}")
        records = [self._turn(raw, i) for i, raw in enumerate(turns)]
        meta = self.store.meta(k)
        first = self.store.append(k, records)
        with self._locks[k.tag]:
            sealed = compactor.compact(self.store, k, self.settings.recent_tokens, self.layout,
                                       meta["keep_source"] == "1", self.settings.tokenizer)
        last = first + len(records)
        if sealed or last // RETIER_EVERY != first // RETIER_EVERY:
            self.retier(tenant, session)
        return {"session": session, "first_index": first, "appended": len(records),
                "turns": last, "sealed_pages": [p.page for p in sealed]}

    # -- tiers and model work -----------------------------------------------------------------
    def placed(self, k: SessionKeys, meta: dict) -> list[context.PlacedPage]:
        return context.place(self.store.pages(k), self._session_curve(meta), self.ladder,
                             int(meta["next_turn"]))

    def tier_now(self, k: SessionKeys, page: int) -> Tier:
        """The tier a page's age gives it now, under its session's curve."""
        meta = self.store.meta(k)
        return context.place([self.store.page(k, page)], self._session_curve(meta), self.ladder,
                             int(meta["next_turn"]))[0].tier

    def retier(self, tenant: str, session: str) -> int:
        """Send pages whose tier changed to the model worker, to be read (and encoded) ahead of use."""
        k = self._keys(tenant, session)
        meta = self.store.meta(k)
        queued = self.store.queued_tiers(k)
        changed = [p for p in self.placed(k, meta)
                   if not p.tier.gone and queued.get(p.record.page) != p.tier.name]
        kinds = ("encode", "decode") if self._encodes() else ("decode",)
        with self.store.r.pipeline(transaction=False) as pipe:  # one round trip, commands in order
            for p in changed:
                for kind in kinds:
                    jobs.enqueue(pipe, kind, tenant, session, p.record.page, p.tier.name)
            for p in changed:
                pipe.hset(k.queued, p.record.page, p.tier.name)  # after the XADDs: a crash re-sends
            pipe.execute()
        return len(changed)

    def _encodes(self) -> bool:
        # Known from the setting without loading the model: an API process with no worker never loads it.
        return reading.encodes(self._backend) if self._backend else self.settings.backend == "deepseek-ocr2"

    def handle_job(self, job: dict[str, str]) -> None:
        k = SessionKeys(job["tenant"], job["session"])
        try:
            tier, page = self.ladder[job["tier"]], int(job["page"])
            if self.tier_now(k, page) != tier:
                return  # the page faded further while the job waited (a bulk import): a newer job has it
            if job["kind"] == "encode":
                reading.visual_tokens(self.store, k, page, tier, self.backend, self.ladder, self.settings.token_ttl)
            elif job["kind"] == "decode":
                reading.decode_page(self.store, k, page, tier, self.backend, self.ladder,
                                    ttl_s=self.settings.token_ttl)
        except (NotFound, KeyError):
            pass  # the session or page was deleted since; nothing to do

    # -- context ------------------------------------------------------------------------------
    def context(self, tenant: str, session: str, budget: int | None = None, fmt: str = "raw",
                image_mode: str = "data", base_url: str = "") -> dict:
        k = self._keys(tenant, session)
        if budget is not None and budget < 0:
            raise BadRequest("budget must be >= 0 tokens")
        if fmt not in ("raw", "openai", "embeddings"):
            raise BadRequest("format must be 'raw', 'openai' or 'embeddings'")
        if fmt == "embeddings" and not self._encodes():
            raise BadRequest("format=embeddings needs visual tokens: set OPTIMEM_BACKEND=deepseek-ocr2 "
                             "(the CPU reader only reads pages back; use format=openai for page images)")
        if image_mode not in ("data", "url"):
            raise BadRequest("images must be 'data' (data URLs) or 'url' (served by optimem)")
        meta = self.store.meta(k)
        built = context.assemble(self.store.text_turns(k), self.placed(k, meta), budget)
        prefix = f"{base_url.rstrip('/')}/v1/sessions/{session}"
        if fmt == "embeddings":
            return {"session": session, **self._embeddings(k, built, image_mode, prefix),
                    "accounting": built["accounting"]}
        if fmt == "openai":
            urls = self._image_urls(k, built["pages"], image_mode, prefix)
            return {"session": session, "messages": context.openai_messages(built["turns"], urls),
                    "accounting": built["accounting"]}
        return {
            "session": session,
            "family": self.ladder.family,
            "curve": json.loads(meta["curve"]),
            "turns": [{"index": t.index, "role": t.role, "content": t.content[t.start:], "time": t.time,
                       "tokens": t.tokens, "continued": t.start > 0} for t in built["turns"]],
            "pages": [self._page_json(p, prefix) for p in built["pages"]],
            "accounting": built["accounting"],
        }

    @staticmethod
    def _page_json(p: context.PlacedPage, prefix: str) -> dict:
        r = p.record
        return {"page": r.page, "first_turn": r.first_turn, "last_turn": r.last_turn,
                "first_time": r.first_time, "last_time": r.last_time, "tier": p.tier.name,
                "px": p.tier.px, "age": p.age, "visual_tokens": round(p.tier.tokens, 2),
                "text_tokens": r.text_tokens, "image_url": f"{prefix}/pages/{r.page}/image?tier={p.tier.name}"}

    def pages(self, tenant: str, session: str, base_url: str = "") -> list[dict]:
        """Every sealed page with its tier and age now and its turn spans ({index, role, time, start, end}),
        faded-out ones included (context leaves those out)."""
        k = self._keys(tenant, session)
        prefix = f"{base_url.rstrip('/')}/v1/sessions/{session}"
        return [{**self._page_json(p, prefix), "turns": p.record.turns} for p in self.placed(k, self.store.meta(k))]

    def sources(self, tenant: str, session: str, turns: list[int]) -> dict[int, dict]:
        """Exact text of turns: sealed ones only where the session keeps source, recent ones always."""
        k = self._keys(tenant, session)
        self.store.meta(k)
        return self.store.sources(k, turns)

    def _image_urls(self, k: SessionKeys, pages: list[context.PlacedPage], mode: str, prefix: str) -> list[dict]:
        """OpenAI ``image_url`` objects, one per page or mosaic canvas, with the detail its tier's cost assumes."""
        images, seen_groups = [], set()
        for p in pages:
            tier = p.tier
            if tier.per_canvas > 1:
                group = p.record.page // tier.per_canvas
                if (tier.name, group) in seen_groups:
                    continue
                seen_groups.add((tier.name, group))
                if mode == "url":
                    url = f"{prefix}/mosaics/{tier.name}/{group}/image"
                else:
                    url = _data_url(self.mosaic_image(k.tenant, k.session, tier.name, group))
            elif mode == "url":
                url = f"{prefix}/pages/{p.record.page}/image?tier={tier.name}"
            else:
                url = _data_url(self.page_image(k.tenant, k.session, p.record.page, tier.name))
            images.append({"url": url, "detail": tier.detail} if tier.detail else {"url": url})
        return images

    def _embeddings(self, k: SessionKeys, built: dict, mode: str, prefix: str) -> dict:
        """Cached visual tokens per page (or mosaic canvas) and the prompt layout that splices them:
        a DeepSeek-OCR-family decoder puts image ``i``'s tokens where its ``n_tokens`` placeholders are."""
        images, seen = [], set()
        for p in built["pages"]:
            unit = reading.token_unit(p.record.page, p.tier)
            if (unit, p.tier.name) in seen:
                continue
            seen.add((unit, p.tier.name))
            tokens = reading.visual_tokens(self.store, k, p.record.page, p.tier, self.backend, self.ladder,
                                           self.settings.token_ttl)
            item = {"unit": unit, "tier": p.tier.name, "n_tokens": tokens.n_tokens,
                    "hidden": int(tokens.tensor.shape[1]), "dtype": str(tokens.tensor.dtype).removeprefix("torch."),
                    "revision": tokens.revision,
                    "pages": [q.record.page for q in built["pages"]
                              if reading.token_unit(q.record.page, q.tier) == unit and q.tier == p.tier]}
            if mode == "url":
                item["tokens_url"] = f"{prefix}/tokens/{unit}?tier={p.tier.name}"
            else:
                item["safetensors_base64"] = base64.b64encode(tokens.to_bytes()).decode()
            images.append(item)
        layout = [{"type": "text", "text": context.MEMORY_PREAMBLE + "\n"}]
        layout += [{"type": "image", "image": i, "n_tokens": item["n_tokens"]} for i, item in enumerate(images)]
        layout += [{"type": "text", "text": f"\n{t.role}: {t.content[t.start:]}"} for t in built["turns"]]
        return {"placeholder": "<image>", "images": images, "layout": layout,
                "turns": [{"index": t.index, "role": t.role, "content": t.content[t.start:]} for t in built["turns"]]}

    def token_bytes(self, tenant: str, session: str, unit: str, tier: str) -> bytes:
        """Safetensors bytes of a page's (or canvas's) visual tokens at a tier; see model.visual_tokens."""
        k = self._keys(tenant, session)
        if not self._encodes():
            raise BadRequest("visual tokens need OPTIMEM_BACKEND=deepseek-ocr2")
        chosen = self._tier(tier)
        if chosen.gone:
            raise BadRequest("a gone page has no visual tokens")
        page = int(unit[1:]) * chosen.per_canvas if unit.startswith("m") else int(unit) if unit.isdigit() else None
        if page is None or reading.token_unit(page, chosen) != unit:
            raise BadRequest(f"unit {unit!r} is not a page number (or m<group> for a mosaic tier)")
        return reading.visual_tokens(self.store, k, page, chosen, self.backend, self.ladder,
                                     self.settings.token_ttl).to_bytes()

    def _tier(self, name: str) -> Tier:
        try:
            return self.ladder[name]
        except KeyError as exc:
            raise BadRequest(str(exc.args[0])) from None

    def page_image(self, tenant: str, session: str, page: int, tier: str | None = None) -> bytes:
        """PNG of a page at a tier (default: the tier its age gives it now; 'full' for the original)."""
        k = self._keys(tenant, session)
        png = self.store.png(k, page)
        if tier == "full":
            return png
        chosen = self.tier_now(k, page) if tier is None else self._tier(tier)
        if chosen.gone:
            raise BadRequest(f"page {page} is gone at tier 'gone': it has faded out of memory")
        return reading.tier_png(png, chosen)

    def mosaic_image(self, tenant: str, session: str, tier: str, group: int) -> bytes:
        k = self._keys(tenant, session)
        chosen = self._tier(tier)
        if chosen.per_canvas <= 1:
            raise BadRequest(f"tier {tier!r} is not a mosaic")
        pngs = reading.group_pngs(self.store, k, group, chosen)
        if not pngs:
            raise NotFound(f"session {session!r} has no pages in {tier} group {group}")
        out = io.BytesIO()
        reading.canvas(pngs, chosen).save(out, format="PNG")
        return out.getvalue()

    # -- recall -------------------------------------------------------------------------------
    def recall(self, tenant: str, session: str, query: str | None = None, turn: int | str | None = None,
               since: str | None = None, until: str | None = None, role: str | None = None,
               limit: int = 5) -> dict:
        k = self._keys(tenant, session)
        if query is not None and (not isinstance(query, str) or not query.strip()):
            raise BadRequest("query must be a non-empty string")
        if query is None and turn is None and since is None and until is None:
            raise BadRequest("recall needs a 'query', a 'turn' (index, 'first' or 'last') or a time range")
        if not 1 <= limit <= 100:
            raise BadRequest("limit must be between 1 and 100")
        if isinstance(turn, str) and turn not in ("first", "last"):
            raise BadRequest("turn must be an index, 'first' or 'last'")
        lo = context.parse_time(normalise_time(since)) if since else None
        hi = context.parse_time(normalise_time(until)) if until else None
        started = time.perf_counter()
        meta = self.store.meta(k)
        placed = self.placed(k, meta)
        text = self.store.text_turns(k)

        def wanted(index: int, turn_role: str, when: str) -> bool:
            if role and turn_role != role:
                return False
            if lo is not None and context.parse_time(when) < lo:
                return False
            return not (hi is not None and context.parse_time(when) > hi)

        # Turn positions are known without reading any page; pick the target before reading.
        known = [(s["index"], s["role"], s["time"]) for p in placed for s in p.record.turns]
        known += [(t.index, t.role, t.time) for t in text]
        candidates = sorted({i for i, r, w in known if wanted(i, r, w)})
        if turn is not None:
            if isinstance(turn, bool) or not isinstance(turn, (int, str)):
                raise BadRequest("turn must be an index, 'first' or 'last'")
            target = (candidates[0] if candidates else None) if turn == "first" else \
                     (candidates[-1] if candidates else None) if turn == "last" else turn
            candidates = [target] if target in candidates else []
        chosen = set(candidates)

        fragments: list[recalling.Fragment] = []
        pages_read = pages_unread = 0
        # Pages the worker has read cost nothing; the rest are read now, newest (sharpest) first,
        # until the read budget is spent, so a recall never hangs on a large unread session.
        reader = reading.reader_id(self.backend) if placed else ""
        cached = {p.record.page: self.store.cached_decoded(k, p.record.page,
                                                           reading.cache_key(p.tier, self.backend), reader)
                  for p in placed}
        deadline = started + self.settings.recall_read_s
        for p in sorted(placed, key=lambda p: (cached[p.record.page] is None, -p.record.page)):
            spans = [s for s in p.record.turns if s["index"] in chosen]
            if not spans:
                continue
            decoded = cached[p.record.page]
            if decoded is None and not p.tier.gone:
                if time.perf_counter() > deadline:
                    pages_unread += 1
                    continue
                decoded = reading.decode_page(self.store, k, p.record.page, p.tier, self.backend, self.ladder,
                                              ttl_s=self.settings.token_ttl)
            pages_read += decoded is not None
            headers = defaultdict(list)
            for t_index, _, line_text, kind in self.store.lines(k, p.record.page):
                if kind == "header":
                    headers[t_index].append(line_text)
            fragments += recalling.fragments_from_decoded(spans, decoded, headers, p.record.page,
                                                          p.tier.name, p.age)
        for t in text:
            if t.index in chosen:
                body = t.content[t.start:]
                fragments.append(recalling.Fragment(t.index, t.role, t.time, None, "text", 0.0, t.start,
                                                    len(t.content), body, 1.0, [body]))

        hits = []
        for f in fragments:
            match = recalling.match_score(query, f.decoded) if query else 1.0
            if query and match <= 0:
                continue
            hits.append((match * f.score, match, f))
        hits.sort(key=lambda h: (-h[0], h[2].turn, h[2].start))
        hits = hits[:limit] if query else sorted(hits, key=lambda h: (h[2].turn, h[2].start))[:limit]
        sources = self.store.sources(k, [f.turn for _, _, f in hits]) if meta["keep_source"] == "1" else {}
        out = []
        for confidence, match, f in hits:
            hit = {"turn": f.turn, "role": f.role, "time": f.time, "page": f.page, "tier": f.tier,
                   "age": f.age, "span": [f.start, f.end], "text": f.decoded,
                   "confidence": round(confidence, 4), "match": round(match, 4)}
            if f.turn in sources:
                exact = sources[f.turn]["content"][f.start:f.end]
                hit["source"] = exact
                hit["char_error"] = round(recalling.char_error(f.decoded, exact), 4)
            out.append(hit)
        return {"session": session, "hits": out, "pages_read": pages_read, "pages_unread": pages_unread,
                "seconds": round(time.perf_counter() - started, 3)}


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
