"""ConversationThread: moving cache breakpoints, rollback on failure, serialization of sends."""
from __future__ import annotations

import copy
import json
import threading

import pytest

import claude_client as cc
import _requests
from claude_client import ClaudeInvocationError, ConversationThread, InterruptToken

pytestmark = pytest.mark.timeout(60)

LONG_SYSTEM = " ".join(f"guideline {i}: answer with care and cite sources." for i in range(400))  # > 1024 tokens


def _breakpoints(body: dict) -> int:
    return sum(_requests.count_breakpoints(body.get(k)) for k in ("tools", "system", "messages"))


def test_ten_turns_read_growing_cache(client_env):
    chat = ConversationThread(system=LONG_SYSTEM)
    reads, writes = [], []
    for turn in range(10):
        reply = chat.send(f"turn {turn}: tell me something about topic {turn}")
        assert reply == f"Echo: turn {turn}: tell me something about topic {turn}"
        reads.append(reply.usage.cache_read_input_tokens)
        writes.append(reply.usage.cache_creation_input_tokens)
    assert reads[0] == 0 and writes[0] > 1024
    assert all(later > earlier for earlier, later in zip(reads[1:], reads[2:]))
    assert reads[1] >= writes[0]  # turn 2 reads everything turn 1 wrote
    assert chat.turn_count == 10 and len(chat) == 10 and len(chat.messages) == 20
    bodies = [r.body for r in client_env.message_requests()]
    assert all(_breakpoints(b) <= 4 for b in bodies)
    assert _breakpoints(bodies[-1]) == 3  # system + previous user + latest user
    assert chat.usage.cache_read_input_tokens == sum(reads)


def test_history_shape_and_copies(client_env):
    chat = ConversationThread(system="be brief", cache_system=False)
    user_blocks = [{"type": "text", "text": "first question"}]
    before = copy.deepcopy(user_blocks)
    chat.send(user_blocks)
    assert user_blocks == before  # caller content never mutated
    chat.send("second question")
    history = chat.get_messages()
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    thinking, text = history[1]["content"]  # the default model thinks: its block is kept, first
    assert text == {"type": "text", "text": "Echo: first question"}
    assert thinking["type"] == "thinking" and thinking["thinking"] == "" and thinking["signature"]
    assert all("cache_control" not in b for m in history for b in m["content"])
    history[0]["content"][0]["text"] = "tampered"
    assert chat.get_messages()[0]["content"][0]["text"] == "first question"
    last_body = client_env.message_requests()[-1].body
    assert last_body["system"] == "be brief"  # one uncached text block is sent as a string
    assert last_body["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert last_body["messages"][2]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert last_body["messages"][1]["content"] == history[1]["content"]  # sent back unchanged
    chat.clear()
    assert len(chat) == 0 and chat.turn_count == 0


def test_no_cache_history(client_env):
    chat = ConversationThread(cache_system=False)
    chat.send("a", cache_history=False)
    chat.send("b", cache_history=False)
    assert all(_breakpoints(r.body) == 0 for r in client_env.message_requests())


def test_failed_send_leaves_no_trace(client_env):
    cc.configure(max_retries=0)
    chat = ConversationThread(system="s")
    chat.send("hello")
    snapshot = chat.get_messages()
    with pytest.raises(ClaudeInvocationError) as info:
        chat.send("broken [[fail=500 times=1]]")
    assert info.value.kind == "server"
    assert chat.get_messages() == snapshot and chat.turn_count == 1
    reply = chat.send("broken [[fail=500 times=1]]")  # the same message again succeeds
    assert reply == "Echo: broken" and chat.turn_count == 2 and len(chat) == 2


def test_interrupt_and_stall_leave_no_trace(client_env):
    chat = ConversationThread()
    chat.send("hi")
    snapshot = chat.get_messages()
    token = InterruptToken()
    chunks: list[str] = []

    def callback(chunk: str) -> None:
        chunks.append(chunk)
        if len(chunks) == 2:
            threading.Thread(target=token.interrupt).start()

    with pytest.raises(ClaudeInvocationError) as info:
        chat.send_streaming("long [[words=100000 delay_ms=5]]", callback, interrupt_token=token)
    assert info.value.kind == "interrupted"
    assert chat.get_messages() == snapshot
    with pytest.raises(ClaudeInvocationError) as info:
        chat.send_streaming("stuck [[stall_after=2]]", stall_timeout=0.3)
    assert info.value.kind == "stalled"
    assert chat.get_messages() == snapshot and chat.turn_count == 1
    assert client_env.wait_for(lambda e: e.stats()["aborted"] == 2, timeout=5)


def test_send_streaming_chunks(client_env):
    chat = ConversationThread()
    chunks: list[str] = []
    reply = chat.send_streaming("stream this please [[words=9]]", chunks.append)
    assert "".join(chunks) == reply and len(chunks) == 9  # thinking is not streamed to the callback
    content = chat.get_messages()[1]["content"]
    assert [b["type"] for b in content] == ["thinking", "text"]
    assert content[1] == {"type": "text", "text": str(reply)} and content[0]["signature"]


def test_max_turns_raises_runtime_error_and_keeps_history(client_env):
    chat = ConversationThread(max_turns=2)
    chat.send("one")
    chat.send("two")
    snapshot = chat.get_messages()
    with pytest.raises(RuntimeError, match=r"Maximum turns \(2\) reached") as info:
        chat.send("three")
    message = str(info.value)
    assert "max_turns=2" in message and "clear()" in message and "new ConversationThread" in message
    with pytest.raises(RuntimeError, match="Maximum turns"):
        chat.send_streaming("three")
    with pytest.raises(RuntimeError, match="Maximum turns"):
        chat.send_continuation()
    assert len(chat) == 2 and chat.turn_count == 2 and chat.get_messages() == snapshot
    assert len(client_env.message_requests()) == 2
    chat.clear()  # the documented way on
    assert chat.send("again") == "Echo: again" and len(chat) == 1


def test_len_is_turns_and_messages_is_a_copy(client_env):
    chat = ConversationThread(cache_system=False)
    assert len(chat) == 0 and chat.turn_count == 0 and chat.messages == []
    chat.send("first")
    chat.send("second")
    chat.send("third")
    assert len(chat) == chat.turn_count == len(chat.messages) // 2 == 3
    view = chat.messages
    assert [m["role"] for m in view] == ["user", "assistant"] * 3
    assert view == chat.get_messages()
    view[0]["content"][0]["text"] = "tampered"
    view.append({"role": "user", "content": "x"})
    assert chat.messages[0]["content"][0]["text"] == "first" and len(chat.messages) == 6
    with pytest.raises(AttributeError):
        chat.messages = []  # read-only


def test_send_continuation(client_env):
    chat = ConversationThread(continuation_prompt="Please go on.")
    with pytest.raises(RuntimeError, match="send"):
        chat.send_continuation()
    assert client_env.requests == []
    chat.send("write a story [[words=50]]")
    reply = chat.send_continuation()
    assert reply == "Echo: Please go on."
    chat.send_continuation("Focus on the ending.")
    assert chat.get_messages()[-2]["content"][0]["text"] == "Please go on.\n\nFocus on the ending."
    default = ConversationThread()
    default.send("x")
    assert default.send_continuation() == "Echo: Continue from where you left off."


def test_concurrent_sends_are_serialized(client_env):
    chat = ConversationThread(system="s")
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            chat.send(f"message {i} [[delay_ms=3 words=6]]")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert chat.turn_count == 8 and len(chat) == 8 and len(chat.messages) == 16
    history = chat.get_messages()
    for user, assistant in zip(history[0::2], history[1::2]):
        assert user["role"] == "user" and assistant["role"] == "assistant"
        n = user["content"][0]["text"].split()[1]
        assert [b["type"] for b in assistant["content"]] == ["thinking", "text"]
        assert assistant["content"][1]["text"].startswith(f"Echo: message {n}")
    assert client_env.peak_concurrency == 1
    # every request carried the full history before it
    sizes = [len(r.body["messages"]) for r in client_env.message_requests()]
    assert sizes == [1, 3, 5, 7, 9, 11, 13, 15]


@pytest.mark.parametrize(
    "kwargs",
    [{"model": ""}, {"max_tokens": 0}, {"temperature": 2.0}, {"temperature": 0.5}, {"max_turns": 0},
     {"continuation_prompt": ""}, {"cache_system": "yes"}, {"system": 3}, {"effort": "extreme"}, {"effort": 3},
     {"thinking": "sometimes"}, {"model": "claude-opus-5-5", "thinking": "disabled"},
     {"model": "claude-haiku-4-5", "effort": "low"}, {"max_tokens": 200_000}],
)
def test_constructor_validation(kwargs):
    with pytest.raises((ValueError, TypeError)):
        ConversationThread(**kwargs)


def test_send_validation_sends_nothing(client_env):
    chat = ConversationThread()
    for bad in ("", "   ", [], 5):
        with pytest.raises((ValueError, TypeError)):
            chat.send(bad)
    assert client_env.requests == [] and len(chat) == 0


def test_system_and_cache_system_changes_apply_to_the_next_send(client_env):
    chat = ConversationThread(system="OLD SYSTEM")
    chat.send("one")
    chat.system = "NEW SYSTEM"
    chat.cache_system = False
    chat.send("two")
    blocks = [{"type": "text", "text": "rule A"}, {"type": "text", "text": "rule B"}]
    before = copy.deepcopy(blocks)
    chat.system = blocks
    chat.cache_system = True
    chat.send("three")
    chat.system = None
    chat.send("four")
    bodies = [r.body for r in client_env.message_requests()]
    assert bodies[0]["system"] == [{"type": "text", "text": "OLD SYSTEM", "cache_control": {"type": "ephemeral"}}]
    assert bodies[1]["system"] == "NEW SYSTEM"
    assert bodies[2]["system"] == [{"type": "text", "text": "rule A"},
                                   {"type": "text", "text": "rule B", "cache_control": {"type": "ephemeral"}}]
    assert "system" not in bodies[3]
    assert blocks == before and chat.system is None  # the caller's blocks were not mutated
    assert all(_breakpoints(b) <= 4 for b in bodies)
    assert _breakpoints(bodies[2]) == 3  # system + previous user + latest user


def test_changed_system_is_validated_before_sending(client_env):
    chat = ConversationThread()
    chat.send("one")
    for attr, value in [("system", 5), ("system", [{"text": "no type"}]), ("cache_system", "yes")]:
        setattr(chat, attr, value)
        with pytest.raises((ValueError, TypeError)):
            chat.send("two")
        setattr(chat, attr, None if attr == "system" else True)
    # system blocks that already carry 3 breakpoints: history breakpoints are dropped to stay at 4
    chat.system = [{"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}} for i in range(3)]
    chat.send("three")
    chat.system = [{"type": "text", "text": f"s{i}", "cache_control": {"type": "ephemeral"}} for i in range(5)]
    with pytest.raises(ValueError, match="cache_control"):
        chat.send("four")
    assert len(client_env.message_requests()) == 2 and len(chat) == 2
    assert _breakpoints(client_env.message_requests()[-1].body) == 4


def test_large_max_tokens_send_falls_back_to_streaming(client_env):
    chat = ConversationThread(max_tokens=32000)
    assert chat.send("hi") == "Echo: hi"  # the SDK requires streaming for this max_tokens
    assert chat.send("again") == "Echo: again"
    records = client_env.message_requests()
    assert [r.stream for r in records] == [True, True] and len(chat) == 2
    assert records[-1].body["max_tokens"] == 32000


# --------------------------------------------------------------- effort, thinking, save / load


def lookup(word: str) -> str:
    """Look a word up.

    Args:
        word: the word
    """
    return f"{word}: a small domesticated animal"


def other(word: str) -> str:
    """Another tool.

    Args:
        word: the word
    """
    return word


def test_effort_and_thinking_are_thread_defaults_a_send_overrides(client_env):
    chat = ConversationThread(effort="low", thinking="adaptive")
    assert chat.send("one").usage.thinking_tokens == 2  # low
    assert chat.send("two", effort="high").usage.thinking_tokens == 8
    chat.effort = "medium"
    assert chat.send_continuation().usage.thinking_tokens == 4
    bodies = [r.body for r in client_env.message_requests()]
    assert [b["output_config"] for b in bodies] == [{"effort": "low"}, {"effort": "high"}, {"effort": "medium"}]
    assert all(b["thinking"] == {"type": "adaptive"} for b in bodies)
    assert chat.usage.thinking_tokens == 14 and chat.usage.output_tokens > 14  # thinking counts as output


def test_a_setting_the_model_refuses_is_refused_before_sending(client_env):
    chat = ConversationThread()
    chat.send("one")
    with pytest.raises(ValueError, match="between_tools"):
        chat.send("two", effort="max", thinking="between_tools")  # Sonnet 5.5: between_tools up to high
    with pytest.raises(ValueError, match="effort"):
        chat.send("two", effort="enormous")
    chat.temperature = 0.2
    with pytest.raises(ValueError, match="effort="):
        chat.send("two")
    assert len(client_env.message_requests()) == 1 and chat.turn_count == 1


def test_thinking_blocks_go_back_unchanged_and_survive_save_and_load_byte_for_byte(client_env, tmp_path):
    chat = ConversationThread(thinking={"type": "adaptive", "display": "summarized"})
    chat.send("Café — naïve 🚀 \u2028 résumé")
    chat.send("second")
    received = chat.messages
    thinking = received[1]["content"][0]
    assert thinking["type"] == "thinking" and "Café — naïve 🚀" in thinking["thinking"] and thinking["signature"]
    sent = client_env.message_requests()[-1].body["messages"]
    assert sent[1]["content"] == received[1]["content"]  # the whole assistant content, unchanged, in order
    path = tmp_path / "chat.json"
    chat.save(path)
    again = ConversationThread.load(path)
    assert json.dumps(again.messages, ensure_ascii=False) == json.dumps(received, ensure_ascii=False)
    assert again.send("third") == "Echo: third"  # the emulator verifies every signature it gets back
    body = client_env.message_requests()[-1].body
    assert body["messages"][1]["content"] == received[1]["content"]
    assert body["messages"][3]["content"] == received[3]["content"]


def test_a_changed_system_drops_the_thinking_bound_to_the_old_one(client_env):
    chat = ConversationThread(system="OLD")
    chat.send("one")
    chat.system = "NEW"
    chat.send("two")  # the API would refuse turn one's block: bound to the old system prompt
    chat.send("three")
    bodies = [r.body for r in client_env.message_requests()]
    assert [b["type"] for b in bodies[1]["messages"][1]["content"]] == ["text"]
    assert [b["type"] for b in bodies[2]["messages"][3]["content"]] == ["thinking", "text"]  # made under NEW
    assert chat.turn_count == 3


def test_the_running_cost_counts_a_paid_refusal(client_env):
    chat = ConversationThread()
    chat.send("one")
    usage, cost = chat.usage, chat.cost_usd
    with pytest.raises(ClaudeInvocationError) as info:
        chat.send("[[refuse category=cyber]] two")
    error = info.value
    assert error.kind == "refusal" and error.usage.input_tokens > 0 and error.cost_usd > 0
    assert chat.turn_count == 1  # the history is untouched
    assert chat.usage == usage + error.usage
    assert chat.cost_usd == pytest.approx(cost + error.cost_usd)
    records = client_env.message_requests()
    assert len(records) == 2  # a refusal is not retried


def test_load_refuses_a_thread_saved_with_tools_unless_they_are_given(client_env, tmp_path):
    chat = ConversationThread(tools=[lookup])
    assert chat.send("define cat [[tool=lookup]]") and chat.turn_count == 2  # the tool turn joins the history
    path = tmp_path / "tools.json"
    chat.save(path)
    sent = len(client_env.message_requests())
    with pytest.raises(ValueError, match=r"tools=.*missing: lookup"):
        ConversationThread.load(path)
    with pytest.raises(ValueError, match="missing: lookup"):
        ConversationThread.load(path, tools=[other])
    again = ConversationThread.load(path, tools=[other, lookup])
    assert again.messages == chat.messages
    assert again.send("and dog?") == "Echo: and dog?"
    assert len(client_env.message_requests()) == sent + 1
    # a file of version 1 (no tool names recorded): the tools its history calls are needed
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["tools"]
    data["version"] = 1
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="missing: lookup"):
        ConversationThread.load(path)


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "assistant", "content": "I start"}, {"role": "user", "content": "hi"}], r"messages\[0\]"),
        ([{"role": "user", "content": ""}], r"messages\[0\]"),
        ([{"role": "user", "content": "hi", "extra": 1}], "extra"),
        ("not a list", "messages"),
    ],
)
def test_load_refuses_messages_the_api_would_refuse(client_env, tmp_path, messages, match):
    chat = ConversationThread()
    chat.send("hi")
    path = tmp_path / "bad.json"
    chat.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["messages"] = messages
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        ConversationThread.load(path)
    assert "bad.json" in str(info.value)


def test_a_saved_temperature_the_api_removed_is_dropped_on_load(client_env, tmp_path, caplog):
    chat = ConversationThread()
    chat.send("hi")
    path = tmp_path / "old.json"
    chat.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["settings"]["temperature"] = 0.5
    path.write_text(json.dumps(data), encoding="utf-8")
    with caplog.at_level("WARNING", logger="claude_client._conversation"):
        again = ConversationThread.load(path)
    assert again.temperature == 1.0 and "temperature=0.5" in caplog.text
    assert again.send("more") == "Echo: more"


def test_save_to_a_directory_or_a_missing_folder_fails_and_leaves_no_temporary_file(client_env, tmp_path):
    chat = ConversationThread()
    chat.send("hi")
    root = tmp_path / "saves"
    folder = root / "folder"
    folder.mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="folder"):
        chat.save(folder)
    with pytest.raises(FileNotFoundError):
        chat.save(root / "missing" / "chat.json")
    good = root / "chat.json"
    chat.save(good)
    chat.save(good)  # replaced atomically
    assert sorted(p.name for p in root.rglob("*")) == ["chat.json", "folder"]
    assert ConversationThread.load(good).messages == chat.messages
