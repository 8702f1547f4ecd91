"""LangChain (langchain-core only): optimem's chat history and retriever, embedded and against a real
`optimem serve`, and a RunnableWithMessageHistory chain over the scripted upstream."""
from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.utils.function_calling import convert_to_openai_tool
from PIL import Image

from optimem.api.client import Client
from optimem.integrations.langchain import OptimemChatMessageHistory, OptimemRetriever
from tests.test_durability import free_port
from tests.test_mcp import conversation, start_serve, stop_serve


def as_messages(turns: list[dict]) -> list:
    return [HumanMessage(t["content"]) if t["role"] == "user" else AIMessage(t["content"]) for t in turns]


def pngs(message) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b["base64"]))) for b in message.content
            if isinstance(b, dict) and b.get("type") == "image"]


def check_history_and_retriever(history: OptimemChatMessageHistory, retriever: OptimemRetriever) -> None:
    turns = conversation(200)
    history.add_messages(as_messages(turns[:100]))
    history.add_messages([ToolMessage("tool output", tool_call_id="c1"), AIMessage("")])   # not conversation
    history.add_messages(as_messages(turns[100:]))
    out = history.messages
    note, pages = out[0], out[1]
    assert isinstance(note, SystemMessage) and "page images" in note.content
    assert isinstance(pages, HumanMessage)
    images = pngs(pages)
    assert images and all(image.format == "PNG" for image in images)
    recent = out[2:]
    sent = [t["content"] for t in turns[-len(recent):]]
    assert recent and sent[0].endswith(recent[0].content)     # the oldest may continue a sealed page's turn
    assert [m.content for m in recent[1:]] == sent[1:]
    assert [type(m) for m in recent] == [type(m) for m in as_messages(turns[-len(recent):])]

    docs = retriever.invoke("where does Marguerite keep the sailboat")
    best = docs[0]
    assert "Marguerite" in best.page_content and "Tortuga" in best.page_content
    assert best.metadata["turn"] == 6 and best.metadata["page"] == 0 and best.metadata["role"] == "user"
    assert best.metadata["tier"] not in ("text", "gone") and 0 < best.metadata["confidence"] <= 1
    assert best.metadata["time"][:2] == "20" and best.metadata["session"] == history.session

    history.clear()
    assert history.messages == [] and retriever.invoke("Marguerite") == []


def test_history_and_retriever_embedded(memory, tenant):
    memory.settings.recall_read_s = 600
    history = OptimemChatMessageHistory("lc", memory, tenant=tenant)
    check_history_and_retriever(history, OptimemRetriever(memory=memory, session="lc", tenant=tenant))
    assert memory.sessions(tenant=tenant) == []


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    port = free_port()
    proc = start_serve(tmp_path_factory.mktemp("lc-serve"), port, OPTIMEM_API_KEYS="key-a:alice,key-b:bob",
                       OPTIMEM_SEAL_BACKGROUND="0", OPTIMEM_RECALL_READ_S="600")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serve(proc)


def test_history_and_retriever_against_optimem_serve(service):
    with Client(service, api_key="key-a") as alice, Client(service, api_key="key-b") as bob:
        history = OptimemChatMessageHistory("lc", alice)
        retriever = OptimemRetriever(memory=alice, session="lc")
        history.add_messages(as_messages(conversation(10)))
        assert OptimemRetriever(memory=bob, session="lc").invoke("Marguerite") == []   # another tenant
        assert OptimemChatMessageHistory("lc", bob).messages == []
        history.clear()
        check_history_and_retriever(history, retriever)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    port = free_port()
    record = tmp_path_factory.mktemp("upstream") / "record.jsonl"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_upstream.py")), str(port),
                             str(record)])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/models", timeout=2).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the fake upstream did not come up"
                time.sleep(0.1)
        yield url, record
    finally:
        proc.kill()
        proc.wait(timeout=30)


def chat_model(url: str, tools: list | None = None):
    """A chat model as a Runnable over an OpenAI-compatible server (langchain-core only: no provider package)."""

    def call(prompt) -> AIMessage:
        body = {"model": "fake-vl", "messages": convert_to_openai_messages(prompt.to_messages())}
        if tools:
            body["tools"] = tools
        answer = httpx.post(f"{url}/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
        calls = [{"name": c["function"]["name"], "args": json.loads(c["function"]["arguments"]), "id": c["id"]}
                 for c in answer.get("tool_calls") or []]
        return AIMessage(content=answer.get("content") or "", tool_calls=calls)

    return RunnableLambda(call)


@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")   # still langchain-core's
def test_a_runnable_with_message_history_chain_sends_memory_pages_and_stores_the_exchange(upstream, service):
    url, record = upstream
    prompt = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant."),
                                               MessagesPlaceholder("history"), ("human", "{question}")])
    with Client(service, api_key="key-a") as alice:
        seeded = OptimemChatMessageHistory("chain", alice, budget=6000)
        seeded.add_messages(as_messages(conversation(150)))
        chain = RunnableWithMessageHistory(prompt | chat_model(url),
                                           lambda session_id: OptimemChatMessageHistory(session_id, alice, budget=6000),
                                           input_messages_key="question", history_messages_key="history")
        reply = chain.invoke({"question": "Where is my sister's boat?"},
                             config={"configurable": {"session_id": "chain"}})
        sent = json.loads(record.read_text().splitlines()[-1])["body"]["messages"]
        images = [p for m in sent if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"]
        assert images and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)
        assert f"I see {len(images)} pages" in reply.content
        assert sent[0] == {"role": "system", "content": "You are a helpful assistant."}
        assert sent[-1] == {"role": "user", "content": "Where is my sister's boat?"}
        stored = alice.recall("chain", turn="last", limit=1).hits[0]
        assert stored.text == reply.content and stored.role == "assistant"
        assert alice.session("chain").turns == 152     # the question and the answer, nothing else


def test_a_text_only_model_reads_memory_through_the_recall_tool(upstream, service):
    url, _ = upstream
    with Client(service, api_key="key-b") as bob:
        history = OptimemChatMessageHistory("tool", bob, mode="tool")
        history.add_messages(as_messages(conversation(150)))
        tool = history.recall_tool()
        context = history.messages
        assert not any(pngs(m) for m in context if isinstance(m.content, list))
        assert "recall_memory" in context[0].content
        question = HumanMessage("Marguerite sailboat")
        model = chat_model(url, tools=[convert_to_openai_tool(tool)])
        asked = model.invoke(ChatPromptTemplate.from_messages([*context, question]).invoke({}))
        (call,) = asked.tool_calls
        assert call["name"] == "recall_memory" and call["args"] == {"query": "Marguerite sailboat"}
        found = tool.invoke(call["args"])
        assert "turn 6" in found and "Marguerite" in found
        answer = model.invoke(ChatPromptTemplate.from_messages(
            [*context, question, asked, ToolMessage(found, tool_call_id=call["id"])]).invoke({}))
        assert answer.content.startswith("From memory:") and "Tortuga" in answer.content
