"""optimem for LangChain (``pip install 'optimem[langchain]'``: langchain-core only).

``OptimemChatMessageHistory`` is a ``BaseChatMessageHistory``: messages in, messages out. What comes
out is optimem's context: the recent turns as text, and the older ones as memory pages, either as
images (vision models) or, for text-only models, as a note plus a ``recall_memory`` tool to look
them up. ``OptimemRetriever`` is a ``BaseRetriever``: a query returns ``Document``s, each a turn as
read back from its page, with where it came from (page, tier, time, confidence) as metadata::

    from optimem import Memory
    from optimem.integrations.langchain import OptimemChatMessageHistory, OptimemRetriever

    memory = Memory().open()                      # or optimem.Client("http://127.0.0.1:8000", api_key=...)
    history = OptimemChatMessageHistory("alice", memory, budget=4000)
    retriever = OptimemRetriever(memory=memory, session="alice")

Both translate; memory is computed by optimem (the same verbs as the API's).
"""
from __future__ import annotations

import base64
from typing import Any, Literal, Optional, Sequence, Union

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from optimem.api.verbs import MemoryLike, Verbs, append_creating, asked, raw_context, recall_text, recalled, verbs
from optimem.errors import NotFound
from optimem.memory.context import MEMORY_PREAMBLE
from optimem.memory.results import RawContext
from optimem.memory.service import DEFAULT_TENANT

__all__ = ["OptimemChatMessageHistory", "OptimemRetriever"]

RECALL_TOOL = "recall_memory"   # the name the proxy offers text-only models too


class RecallArgs(BaseModel):
    query: Optional[str] = Field(None, description="What to look for, in a few keywords.")
    turn: Union[StrictInt, Literal["first", "last"], None] = Field(
        None, description="One turn by index (0 is the first), or 'first' / 'last'.")
    since: Optional[str] = Field(None, description="Only turns at or after this ISO 8601 time.")
    until: Optional[str] = Field(None, description="Only turns at or before this ISO 8601 time.")
    limit: int = Field(5, ge=1, le=20, description="At most this many hits.")


class OptimemChatMessageHistory(BaseChatMessageHistory):
    """A session of optimem as LangChain chat history.

    ``memory``: an ``optimem.Memory`` (``tenant`` says whose sessions) or an ``optimem.Client`` (its
    key says). ``budget``: tokens for the whole context (text + pages), None for no limit.
    ``mode``: ``"images"`` sends the memory pages as PNG image blocks at each page's tier;
    ``"tool"`` sends none, only a system note on what memory holds, for a text-only model given
    ``recall_tool()``. ``images_in``: where the page images go. ``"user"`` (default): a system
    note, then a user message holding the images, because OpenAI's and Anthropic's APIs take
    images in user turns only; ``"system"``: one system message holding note and images (models
    that take them there, e.g. vLLM's). Messages added are stored as turns (created on first use);
    tool traffic is not stored."""

    def __init__(self, session: str, memory: MemoryLike, *, tenant: str = DEFAULT_TENANT,
                 budget: int | None = None, mode: Literal["images", "tool"] = "images",
                 images_in: Literal["user", "system"] = "user") -> None:
        if mode not in ("images", "tool"):
            raise ValueError("mode must be 'images' or 'tool'")
        if images_in not in ("user", "system"):
            raise ValueError("images_in must be 'user' or 'system'")
        self.session, self.budget, self.mode, self.images_in = session, budget, mode, images_in
        self.verbs: Verbs = verbs(memory, tenant)

    # -- out ----------------------------------------------------------------------------------
    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        try:
            ctx = raw_context(self.verbs, self.session, self.budget)
        except NotFound:
            return []
        return self._memory_messages(ctx) + [_message(t.role, t.content) for t in ctx.turns]

    def _memory_messages(self, ctx: RawContext) -> list[BaseMessage]:
        if not ctx.pages:
            return []
        first, last = ctx.pages[0], ctx.pages[-1]
        span = (f"turns {first.first_turn}-{last.last_turn}, {first.first_time} to {last.last_time}, "
                f"on {len(ctx.pages)} page(s)")
        if self.mode == "tool":
            return [SystemMessage(content=f"Memory: the earlier turns of this conversation ({span}) are not shown "
                                          f"here. To look something up, call {RECALL_TOOL} with a query, a turn "
                                          "index or a time range; it returns what the pages still say.")]
        blocks: list[Any] = [{"type": "text", "text": f"{MEMORY_PREAMBLE} ({span})"}]
        for p in ctx.pages:   # each at the tier the context placed it at (the budget may have faded it)
            png = self.verbs.page_image(self.session, p.page, p.tier)
            blocks.append({"type": "text", "text": f"Page {p.page}: turns {p.first_turn}-{p.last_turn}, tier {p.tier}"})
            blocks.append({"type": "image", "base64": base64.b64encode(png).decode(), "mime_type": "image/png"})
        if self.images_in == "system":
            return [SystemMessage(content=blocks)]
        note = SystemMessage(content=f"Memory: the earlier turns of this conversation ({span}) follow as transcript "
                                     "page images in the next message.")
        return [note, HumanMessage(content=blocks)]

    # -- in -----------------------------------------------------------------------------------
    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        turns = [turn for turn in (_turn(m) for m in messages) if turn is not None]
        if turns:
            append_creating(self.verbs, self.session, turns)

    def clear(self) -> None:
        """Delete the session: its turns and pages, for good."""
        try:
            self.verbs.delete_session(self.session)
        except NotFound:
            pass

    # -- text-only models ---------------------------------------------------------------------
    def recall_tool(self) -> StructuredTool:
        """``recall_memory``: a tool a text-only model calls to read back earlier turns of this session."""

        def recall_memory(query: str | None = None, turn: int | str | None = None, since: str | None = None,
                          until: str | None = None, limit: int = 5) -> str:
            try:
                got = self.verbs.recall(self.session, query, turn=turn, since=since, until=until, limit=limit)
            except NotFound:
                return f"Nothing found: session {self.session!r} holds nothing yet."
            return recall_text(recalled(got, asked(query=query, turn=turn, since=since, until=until)))

        return StructuredTool.from_function(
            recall_memory, name=RECALL_TOOL, args_schema=RecallArgs,
            description="Read back earlier turns of this conversation from memory: by query (keywords), turn "
                        "or time range. Old pages fade, so each hit says how sure the reading is.")


class OptimemRetriever(BaseRetriever):
    """Turns of a session that match a query, as read back from their pages: one ``Document`` per hit
    (its text), with turn, role, time, page, tier, age and confidence as metadata. A turn whose page
    has faded out entirely has no text and is left out."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Any = Field(description="An optimem.Memory or optimem.Client.")
    session: str
    tenant: str = DEFAULT_TENANT
    limit: int = 5

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        try:
            got = verbs(self.memory, self.tenant).recall(self.session, query, limit=self.limit)
        except NotFound:
            return []
        return [Document(page_content=h.text, metadata={
            "session": self.session, "turn": h.turn, "role": h.role, "time": h.time, "page": h.page,
            "tier": h.tier, "age": h.age, "confidence": h.confidence}) for h in got.hits if h.text.strip()]


def _message(role: str, content: str) -> BaseMessage:
    if role == "assistant":
        return AIMessage(content=content)
    if role == "system":
        return SystemMessage(content=content)
    return HumanMessage(content=content, **({"name": role} if role != "user" else {}))


def _turn(message: BaseMessage) -> dict[str, Any] | None:
    """A message as a stored turn; None for tool traffic and empty messages (not conversation)."""
    if isinstance(message, ToolMessage) or message.type == "tool":
        return None
    content = message.content
    if isinstance(content, list):
        kinds = {part.get("type") for part in content if isinstance(part, dict)} - {"text"}
        if kinds:
            raise ValueError(f"a {message.type} message has {sorted(map(str, kinds))} parts; optimem keeps text "
                             "turns: send text only")
        content = "\n".join(part if isinstance(part, str) else part.get("text", "") for part in content)
    if not content.strip():
        return None
    role = {"human": "user", "ai": "assistant", "system": "system"}.get(message.type, message.type)
    if role == "user" and message.name:
        role = message.name
    return {"role": role, "content": content}
