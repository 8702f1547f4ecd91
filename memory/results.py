"""What memory answers, as typed results: the embedded ``Memory``, the HTTP API (these are its
response models, so the OpenAPI docs show exactly them) and the HTTP clients all return these."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field


class Session(BaseModel):
    id: str
    created: float
    curve: dict[str, Any]
    keep_source: bool
    turns: int = Field(description="Turns appended so far.")
    pages: int = Field(description="Pages sealed so far.")
    text_turns_from: int = Field(description="Index of the oldest turn still kept as plain text.")
    family: str = Field(description="Model family whose views and token costs the tiers follow.")
    importing: bool = Field(False, description="An import is building this session now, or stopped part way "
                                               "(a process killed mid-import): importing the same id again "
                                               "replaces it once the import has shown no sign of life for "
                                               "two minutes.")


class Appended(BaseModel):
    session: str
    first_index: int = Field(description="Index given to the first appended turn.")
    appended: int
    turns: int = Field(description="Turns in the session now.")
    sealed_pages: list[int] = Field(description="Pages this append sealed (empty when they are sealed just after "
                                                "it: see `sealing`).")
    sealing: bool = Field(False, description="True when pages are being sealed just after this append "
                                             "(OPTIMEM_SEAL_BACKGROUND): reads wait for it a moment at most "
                                             "and see its turns as text meanwhile; they are stored either way.")


class TextTurn(BaseModel):
    index: int
    role: str
    content: str
    time: str
    tokens: int
    continued: bool = Field(description="True when the turn's beginning is already on a sealed page.")
    forgotten: bool = Field(False, description="Forgotten on request: its text is gone, its number kept.")


class PageInfo(BaseModel):
    page: int
    first_turn: int
    last_turn: int
    first_time: str
    last_time: str
    tier: str
    px: int
    age: float = Field(description="In the curve's unit: turns appended after the page's last turn, or seconds since it.")
    visual_tokens: float = Field(description="Visual tokens the page costs (in a context: its share of a mosaic "
                                             "canvas, which is charged whole once).")
    text_tokens: int
    curve_tier: Optional[str] = Field(None, description="In a context: the tier the curve gives the page; "
                                                         "differs from tier when the budget faded it further.")
    image_url: Optional[str] = Field(None, description="Where the API serves the page at this tier (absent in-process).")
    made_for_context: bool = Field(False, description="A page typeset for this context from recent turns (not "
                                                      "sealed): its image comes inline, never from a link.")



class PageSpans(PageInfo):
    turns: list[dict[str, Any]] = Field(description="The turn spans the page holds: {index, role, time, start, end} "
                                                    "(characters [start, end) of the turn).")

class Accounting(BaseModel):
    recent_text_tokens: int
    pages: int
    pages_forgotten: int = Field(description="Pages faded to 'gone' and left out.")
    turns_forgotten: int = Field(0, description="Turns of the session forgotten on request (DELETE .../turns/{n}): "
                                                "their text is gone from the pages and the text, their numbers stay.")
    text_tokens_replaced: int = Field(description="Text tokens the included pages stand for.")
    visual_tokens: float = Field(description="Visual tokens the included pages cost.")
    compression: Optional[float] = Field(description="text_tokens_replaced / visual_tokens.")
    total_tokens: float
    budget: Optional[int]
    dropped_turns: int
    dropped_pages: int = Field(description="Pages left out for the budget: only when even the faintest "
                                           "readable tier of every page kept would not fit.")
    pages_faded_by_budget: int = Field(0, description="Pages sent at a fainter tier than their curve gives "
                                                      "them, so that the memory fits the budget.")
    min_memory_tokens: int = Field(0, description="Tokens of the budget the caller asked to keep for memory "
                                                  "pages before recent text (0: recent text first).")
    memory_tokens_reserved: float = Field(0, description="What was kept from recent text for memory: "
                                                         "min(min_memory_tokens, budget, memory at curve tiers).")
    recent_floor_turns: Optional[int] = Field(None, description="The newest turns that always stay text; older "
                                                                "text moves onto pages made for this context when "
                                                                "the memory would otherwise fade below legible "
                                                                "(OPTIMEM_RECENT_FLOOR_TURNS; null: text first).")
    pages_made: int = Field(0, description="Pages typeset for this context from turns not sealed yet (in `pages`).")
    turns_moved_to_pages: int = Field(0, description="Recent turns shown on those pages instead of as text.")
    text_tokens_moved: int = Field(0, description="Text tokens those pages hold (in text_tokens_replaced).")


class RawContext(BaseModel):
    session: str
    family: str
    curve: dict[str, Any]
    turns: list[TextTurn]
    pages: list[PageInfo]
    accounting: Accounting


class OpenAIContext(BaseModel):
    session: str
    messages: list[dict[str, Any]] = Field(description="OpenAI chat messages: one user message holding "
                                                       "the memory pages as image parts, then recent turns.")
    accounting: Accounting


class TokenImage(BaseModel):
    unit: str = Field(description="Page number, or m<group> for a mosaic canvas shared by several pages.")
    tier: str
    n_tokens: int
    hidden: int
    dtype: str
    revision: str = Field(description="Model revision that made the tokens; only it can read them.")
    pages: list[int]
    tokens_url: Optional[str] = Field(None, description="Where to GET the safetensors bytes (images=url).")
    safetensors_base64: Optional[str] = Field(None, description="The safetensors bytes inline (images=data).")


class EmbeddingsContext(BaseModel):
    session: str
    placeholder: str = Field(description="The decoder's image placeholder token.")
    images: list[TokenImage]
    layout: list[dict[str, Any]] = Field(description="Prompt in order: text segments and images; image i "
                                                     "takes n_tokens placeholders, replaced by its tokens.")
    turns: list[dict[str, Any]]
    accounting: Accounting


class Hit(BaseModel):
    turn: int
    role: str
    time: str
    page: Optional[int] = Field(description="Page it was read from; null when the turn is still plain text.")
    tier: str = Field(description="Tier the page was read at; 'text' for recent turns.")
    age: float
    span: list[int] = Field(description="[start, end) characters of the turn this hit covers.")
    text: str = Field(description="The decoded text (empty when the page has faded out).")
    confidence: float
    match: float
    source: Optional[str] = Field(None, description="The exact source text, when the session keeps it.")
    char_error: Optional[float] = Field(None, description="Character error rate of text vs source (whitespace ignored).")
    found_by: Literal["index", "position", "time"] = Field(
        description="How the turn was found: 'index', the session's text index answered a content query "
                    "(no page read to find it); 'position', asked for by turn (an index, 'first' or "
                    "'last'); 'time', in the asked-for time range. The hit's text is read back either way.")
    searched: Optional[Literal["source", "decoded"]] = Field(
        None, description="For found_by 'index': which text of the turn matched. 'source': its exact text "
                          "(kept source, or a recent turn still plain text); 'decoded': what a read of its "
                          "page gave (forget-for-real sessions: a sealed turn has no other text). Null "
                          "for 'position' and 'time'.")
    time_match: Optional[str] = Field(
        None, description="For found_by 'index': the time words of the query this turn's time is in and the "
                          "window they were read as, relative to the session's latest turn "
                          "(e.g. 'a month ago: 2024-03-20..2024-04-19'); null when the query names no time "
                          "or the turn is outside it.")
    asked: Optional[dict[str, Any]] = Field(
        None, description="For found_by 'index', where the session keeps source: the turn that asks what this "
                          "turn answers (the one just before, by another role, or one two or three turns before "
                          "when the hit was found as its answer), as {turn, role, text} (its exact source), so "
                          "the pair reads together; null otherwise.")


class Forgotten(BaseModel):
    session: str
    turns: list[int] = Field(description="The turns whose text is now gone (turn numbers stay).")
    pages: list[int] = Field(description="Pages whose pixels were painted over where those turns were.")
    seconds: float


class Recall(BaseModel):
    session: str
    hits: list[Hit]
    pages_read: int = Field(description="Pages whose decoded text was searched.")
    pages_unread: int = Field(description="Pages not searched: unread by the worker yet and past the read "
                                          "budget (OPTIMEM_RECALL_READ_S). Ask again later.")
    seconds: float
