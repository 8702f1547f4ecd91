"""Memory for agents over MCP, through the official `mcp` client: `optimem mcp` spawned on stdio, and
/mcp on a real `optimem serve` behind two API keys."""
from __future__ import annotations

import base64
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from optimem.memory.lab.corpus import longest
from optimem.memory.service import Memory
from optimem.settings import Settings
from tests.test_api import every_turn_is_somewhere
from tests import live
from tests.test_durability import free_port

FACT = "By the way, my sister Marguerite keeps her sailboat Tortuga moored at pier 47 in Halifax."
TOOLS = {"remember", "recall", "context", "sessions", "forget_session", "forget_turns"}   # forget_turns: issue 24
LIMIT_S = 240   # any one conversation with a server; the test fails rather than hangs


def conversation(n: int) -> list[dict]:
    turns = [{"role": t["role"], "content": t["content"]} for t in longest()[1][:n]]
    turns[6] = {"role": "user", "content": FACT}
    return turns


def mcp_env(data_dir, **extra: str) -> dict:
    return {**os.environ, "OPTIMEM_DATA_DIR": str(data_dir), "OPTIMEM_REDIS_URL": "", "OPTIMEM_WORKER": "0",
            "OPTIMEM_RECENT_TOKENS": "300", "OPTIMEM_API_KEYS": "", **extra}


def stdio(data_dir, *args: str, **env: str) -> Client:
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "optimem.api.cli", "mcp", *args],
                                        env=mcp_env(data_dir, **env)))


def over_http(url: str, key: str | None, mode: str = "auto", keepalive: bool = True) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx2.Limits() if keepalive else httpx2.Limits(max_keepalive_connections=0)
    http = httpx2.AsyncClient(headers=headers, timeout=120, limits=limits)
    return Client(streamable_http_client(f"{url}/mcp", http_client=http), mode=mode)


def run(fn) -> None:
    async def bounded():
        with anyio.fail_after(LIMIT_S):
            await fn()
    anyio.run(bounded)


def error_text(result) -> str:
    assert result.is_error, result
    text = " ".join(c.text for c in result.content if c.type == "text")
    assert "Traceback" not in text and 'File "' not in text
    return text


def test_an_agent_on_stdio_remembers_500_turns_recalls_an_early_fact_from_its_page_and_forgets(tmp_path):
    turns = conversation(500)

    async def agent():
        async with stdio(tmp_path, OPTIMEM_CURVE="keep", OPTIMEM_RECALL_READ_S="600") as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description and "\n" not in tool.description and tool.input_schema["type"] == "object"
                assert tool.output_schema and tool.output_schema["type"] == "object"
            assert tools["recall"].input_schema["properties"]["limit"]["maximum"] == 100
            assert "session" in tools["remember"].input_schema["required"]

            for i in range(0, 500, 100):   # batches: a client that sends turns as they come would send one
                got = await c.call_tool("remember", {"session": "long", "turns": turns[i:i + 100]})
                assert not got.is_error and got.structured_content["first_turn"] == i
            assert got.structured_content["turns"] == 500
            one = await c.call_tool("remember", {"session": "other", "text": "I park on level 3.", "role": "user"})
            assert one.structured_content["remembered"] == 1
            listed = await c.call_tool("sessions", {})
            assert listed.structured_content["sessions"] == ["long", "other"]

            # Pages are sealed just after `remember` answers; until then a turn is served as text. Wait for page 0.
            deadline = time.monotonic() + 60
            while True:
                found = await c.call_tool("recall", {"session": "long", "query": "where does Marguerite keep the "
                                                     "sailboat", "limit": 3})
                best = found.structured_content["hits"][0]
                if best["page"] is not None or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.2)
            assert (best["turn"], best["page"], best["tier"]) == (6, 0, "crops")
            assert best["text"].replace("\n", " ") == FACT        # as read from the page, not the kept source
            assert best["confidence"] > 0.8 and best["role"] == "user"
            assert "page 0, tier crops" in found.content[0].text and "Marguerite" in found.content[0].text
            nothing = await c.call_tool("recall", {"session": "long", "query": "xylophone zeppelin"})
            assert nothing.structured_content["found"] == 0
            assert nothing.content[0].text.startswith("Nothing found in session 'long'")

            ctx = await c.call_tool("context", {"session": "long", "budget": 4000})
            data = ctx.structured_content
            images = [b for b in ctx.content if b.type == "image"]
            assert data["pages"] and len(images) == len(data["pages"]) == data["accounting"]["pages"]
            for block, page in zip(images, data["pages"]):
                assert block.mime_type == "image/png"
                picture = Image.open(io.BytesIO(base64.b64decode(block.data)))
                assert picture.format == "PNG" and picture.size[0] == page["px"]
            assert data["accounting"]["total_tokens"] <= 4000
            assert [t["index"] for t in data["turns"]] == list(range(500 - len(data["turns"]), 500))
            assert data["turns"][-1]["content"] == turns[-1]["content"]

            (template,) = (await c.list_resource_templates()).resource_templates
            assert template.uri_template == "optimem://{session}/pages/{n}{?tier}"
            full = (await c.read_resource("optimem://long/pages/0?tier=full")).contents[0]
            assert full.mime_type == "image/png"
            assert Image.open(io.BytesIO(base64.b64decode(full.blob))).format == "PNG"
            now = (await c.read_resource("optimem://long/pages/0")).contents[0]      # at its tier now
            assert Image.open(io.BytesIO(base64.b64decode(now.blob))).size[0] == 1024
            with pytest.raises(Exception, match="unknown tier"):
                await c.read_resource("optimem://long/pages/0?tier=blurry")

            refused = await c.call_tool("forget_session", {"session": "long"})
            assert "confirm=true" in error_text(refused)
            assert (await c.call_tool("sessions", {})).structured_content["sessions"] == ["long", "other"]
            gone = await c.call_tool("forget_session", {"session": "long", "confirm": True})
            assert gone.structured_content == {"session": "long", "deleted": True}
            assert (await c.call_tool("sessions", {})).structured_content["sessions"] == ["other"]
            assert "no session 'long'" in error_text(await c.call_tool("recall", {"session": "long", "turn": 0}))

    run(agent)


def test_bad_arguments_are_tool_errors_that_say_what_to_fix(tmp_path):
    async def agent():
        async with stdio(tmp_path) as c:
            cases = [
                ("remember", {"session": "s"}, "either `turns`"),
                ("remember", {"session": "s", "text": "a", "turns": [{"role": "user", "content": "b"}]}, "not both"),
                ("remember", {"session": "../etc", "text": "a"}, "session"),
                ("remember", {"session": "s", "turns": [{"content": "no role"}]}, "role"),
                ("recall", {"session": "s"}, "give a `query`"),
                ("recall", {"session": "s", "query": "x", "limit": "many"}, "limit"),
                ("recall", {"session": "s", "turn": "middle"}, "turn"),
                ("recall", {"session": "s", "since": "last tuesday-ish"}, "time"),
                ("context", {"session": "s", "budget": -5}, "budget"),
                ("context", {"session": "nobody"}, "no session 'nobody'"),
                ("forget_session", {"session": "s", "confirm": "yes please"}, "confirm"),
                ("no_such_tool", {}, "Unknown tool"),
            ]
            await c.call_tool("remember", {"session": "s", "text": "hello"})
            for name, arguments, says in cases:
                got = await c.call_tool(name, arguments)
                assert says in error_text(got), (name, arguments, error_text(got))
            assert (await c.call_tool("sessions", {})).structured_content["sessions"] == ["s"]   # still serving

    run(agent)


class RawStdio:
    """`optimem mcp` on plain pipes: JSON-RPC lines in and out, so a garbage line can be sent."""

    def __init__(self, data_dir):
        self.proc = subprocess.Popen([sys.executable, "-m", "optimem.api.cli", "mcp"], env=mcp_env(data_dir),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 0
        self.unasked: list[dict] = []   # what came back that answered no call of ours

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def call(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        self.send(json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if message.get("id") == self.next_id:
                return message
            self.unasked.append(message)

    def start(self) -> "RawStdio":
        got = self.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                       "clientInfo": {"name": "raw", "version": "0"}})
        assert got["result"]["serverInfo"]["name"] == "optimem"
        self.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        return self

    def tool(self, name: str, arguments: dict) -> dict:
        return self.call("tools/call", {"name": name, "arguments": arguments})["result"]


@contextmanager
def raw_stdio(data_dir):
    server = RawStdio(data_dir)
    try:
        yield server.start()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(timeout=30)


def test_a_garbage_line_is_answered_and_the_next_call_served_and_kill_9_loses_no_turn(tmp_path):
    turns = conversation(300)
    with raw_stdio(tmp_path) as server:
        server.send("this is not JSON-RPC {")
        server.send('{"jsonrpc": "2.0", "id": "x", "method": 42}')
        listed = server.call("tools/list")
        assert {t["name"] for t in listed["result"]["tools"]} == TOOLS
        assert [(m["id"], m["error"]["code"]) for m in server.unasked] == [(None, -32700), (None, -32600)]
        assert all("one JSON-RPC message per line" in m["error"]["message"] for m in server.unasked)
        bad = server.tool("remember", {"session": 7, "text": "x"})
        assert bad["isError"] and "session" in bad["content"][0]["text"]
        for i in range(0, 300, 100):
            got = server.tool("remember", {"session": "crash", "turns": turns[i:i + 100]})
            assert not got.get("isError") and got["structuredContent"]["turns"] == i + 100
        server.proc.send_signal(signal.SIGKILL)   # right after the last answer: pages may be mid-seal
        server.proc.wait(timeout=30)

    memory = Memory(Settings(data_dir=tmp_path, worker=False, recent_tokens=300)).open()   # adopts its Redis
    try:
        assert memory.session("crash").turns == 300
        every_turn_is_somewhere(memory, "default", "crash", turns)
        assert memory.recall("crash", turn=299).hits[0].text == turns[299]["content"]
    finally:
        memory.close()


def start_serve(data_dir, port: int, *args: str, **env: str) -> subprocess.Popen:
    return live.start_serve(mcp_env(data_dir, **env), port, *args)


stop_serve = live.stop_serve


@pytest.fixture
def served(tmp_path):
    port = free_port()
    proc = start_serve(tmp_path, port, OPTIMEM_API_KEYS="key-a:alice,key-b:bob")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_serve(proc)


def test_mcp_over_http_keeps_tenants_apart_and_refuses_no_key(served):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = httpx.post(f"{served}/mcp", headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401 and "API key" in refused.json()["detail"]
    assert "/mcp" not in httpx.get(f"{served}/openapi.json").json()["paths"]

    async def nobody():
        async with over_http(served, None) as c:
            await c.list_tools()

    with pytest.raises(Exception):
        run(nobody)

    async def tenants():
        async with over_http(served, "key-a", mode="legacy") as alice, over_http(served, "key-b") as bob:
            assert {t.name for t in (await alice.list_tools()).tools} == TOOLS
            await alice.call_tool("remember", {"session": "diary", "text": "Alice's safe code is 7712."})
            await alice.call_tool("remember", {"session": "alice-only", "text": "Alice likes figs."})
            await bob.call_tool("remember", {"session": "diary", "text": "Bob walks the dog at noon."})

            assert (await alice.call_tool("sessions", {})).structured_content["sessions"] == ["alice-only", "diary"]
            assert (await bob.call_tool("sessions", {})).structured_content["sessions"] == ["diary"]
            theirs = await bob.call_tool("recall", {"session": "diary", "query": "safe code"})
            assert all("Alice" not in h["text"] for h in theirs.structured_content["hits"])
            assert "no session 'alice-only'" in error_text(
                await bob.call_tool("recall", {"session": "alice-only", "query": "figs"}))
            assert "no session 'alice-only'" in error_text(
                await bob.call_tool("forget_session", {"session": "alice-only", "confirm": True}))
            assert "no session 'alice-only'" in error_text(await bob.call_tool("context", {"session": "alice-only"}))
            mine = await alice.call_tool("recall", {"session": "alice-only", "query": "figs"})
            assert mine.structured_content["hits"][0]["text"] == "Alice likes figs."
            own = await alice.call_tool("recall", {"session": "diary", "turn": "last"})
            assert own.structured_content["hits"][0]["text"] == "Alice's safe code is 7712."

    run(tenants)

    async def bob_on_stdio():   # `optimem mcp --url`: stdio for the assistant, the service's memory behind it
        async with stdio("/nonexistent", "--url", served, "--api-key", "key-b") as c:
            assert (await c.call_tool("sessions", {})).structured_content["sessions"] == ["diary"]
            got = await c.call_tool("recall", {"session": "diary", "turn": 0})
            assert got.structured_content["hits"][0]["text"] == "Bob walks the dog at noon."
            assert "no session 'alice-only'" in error_text(await c.call_tool("context", {"session": "alice-only"}))

    run(bob_on_stdio)
    seen = httpx.get(f"{served}/v1/sessions", headers={"Authorization": "Bearer key-a"}).json()["sessions"]
    assert seen == ["alice-only", "diary"]


def test_mcp_over_http_works_on_serve_with_two_processes(tmp_path):
    """Stateless: no MCP session lives in one process, so every call may land on either."""
    port = free_port()
    proc = start_serve(tmp_path, port, "--workers", "2")
    try:
        async def agent():
            # A new connection for every request: the kernel hands each to either process.
            async with over_http(f"http://127.0.0.1:{port}", None, mode="legacy", keepalive=False) as c:
                for i in range(12):
                    got = await c.call_tool("remember", {"session": "w", "text": f"note {i}"})
                    assert not got.is_error and got.structured_content["turns"] == i + 1
                found = await c.call_tool("recall", {"session": "w", "turn": "last"})
                assert found.structured_content["hits"][0]["text"] == "note 11"

        run(agent)
    finally:
        stop_serve(proc)


def test_optimem_mcp_and_optimem_serve_share_one_store(tmp_path):
    """Both on one data directory: what one remembers the other sees, and serve keeps its Redis when
    `optimem mcp` exits."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_serve(tmp_path, port)
    try:
        httpx.post(f"{url}/v1/sessions", json={"id": "shared"}).raise_for_status()
        httpx.post(f"{url}/v1/sessions/shared/turns", json={"turns": [{"role": "user", "content": "From HTTP."}]}
                   ).raise_for_status()

        async def agent():
            async with stdio(tmp_path) as c:
                assert (await c.call_tool("sessions", {})).structured_content["sessions"] == ["shared"]
                await c.call_tool("remember", {"session": "shared", "text": "From MCP."})
                got = await c.call_tool("recall", {"session": "shared", "turn": "first"})
                assert got.structured_content["hits"][0]["text"] == "From HTTP."
                last = httpx.post(f"{url}/v1/sessions/shared/recall", json={"turn": "last"}).json()
                assert last["hits"][0]["text"] == "From MCP."

        run(agent)
        after = httpx.get(f"{url}/v1/sessions/shared", timeout=10)
        assert after.status_code == 200 and after.json()["turns"] == 2
    finally:
        stop_serve(proc)
