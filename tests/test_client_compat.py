"""claude_client: the seed skill's public API (existing callers must keep working).

get_anthropic_api_key (and the seed's claude.env), MissingAPIKeyError (ValueError + auth),
get_available_models, parse_json_response, invoke_claude_json, the batch error kinds, and the
fast paths of _normalize_prompts (same results and errors as before).
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import pickle
import threading
import types
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest

import claude_client as cc
import _requests
from claude_client import ClaudeInvocationError, MissingAPIKeyError

pytestmark = pytest.mark.timeout(60)


def _project() -> Path:
    return Path(os.environ[cc.PROJECT_DIR_ENV])


# ------------------------------------------------------------------ public names


def test_seed_names_are_public_and_documented():
    for name in ("get_anthropic_api_key", "get_available_models", "parse_json_response", "invoke_claude_json",
                 "MissingAPIKeyError", "ERROR_KINDS"):
        assert name in cc.__all__
        assert getattr(cc, name) is not None
    for fn in (cc.get_anthropic_api_key, cc.get_available_models, cc.parse_json_response, cc.invoke_claude_json,
               cc.MissingAPIKeyError):
        assert fn.__doc__ and ">>>" in fn.__doc__
    star: dict = {}
    exec("from claude_client import *", star)  # noqa: S102 - checks __all__ resolves
    assert {"get_anthropic_api_key", "invoke_claude_json", "MissingAPIKeyError"} <= set(star)


# ------------------------------------------------------------------ credentials


def test_get_anthropic_api_key_env_and_cache(client_env, monkeypatch):
    assert cc.get_anthropic_api_key() == "sk-ant-test-key"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-changed")
    assert cc.get_anthropic_api_key() == "sk-ant-test-key"  # cached, like the client
    cc.reset_client()
    assert cc.get_anthropic_api_key() == "sk-ant-changed"
    assert cc.get_client().api_key == cc.get_anthropic_api_key()
    cc.configure(api_key="sk-ant-configured")
    assert cc.get_anthropic_api_key() == "sk-ant-configured"


def test_claude_env_is_the_last_fallback(client_env, monkeypatch):
    project = _project()
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (project / "claude.env").write_text('# seed credentials\nOTHER=1\nexport API_KEY="sk-from-env-file"\n')
    cc.reset_client()
    assert cc.get_anthropic_api_key() == "sk-from-env-file"
    assert cc.invoke_claude("hi") == "Echo: hi"
    assert client_env.message_requests()[-1].status == 200
    (project / "API_CREDENTIALS.json").write_text(json.dumps({"anthropic_api_key": "sk-from-json"}))
    cc.reset_client()
    assert cc.get_anthropic_api_key() == "sk-from-json"
    (project / "ANTHROPIC_API_KEY.txt").write_text("sk-from-txt\n")
    cc.reset_client()
    assert cc.get_anthropic_api_key() == "sk-from-txt"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-environment")
    cc.reset_client()
    assert cc.get_anthropic_api_key() == "sk-from-environment"


@pytest.mark.parametrize(
    "text, key",
    [
        ("API_KEY=sk-plain\n", "sk-plain"),
        ("API_KEY='sk-single'\n", "sk-single"),
        ('API_KEY = "sk-spaced"  \n', "sk-spaced"),
        ("ANTHROPIC_API_KEY=sk-long-name", "sk-long-name"),
        ("\n# API_KEY=sk-commented\nAPI_KEY=sk-real\n", "sk-real"),
        ("API_KEY=sk-inline  # production key\n", "sk-inline"),
        ("API_KEY=sk-tab\t# note\n", "sk-tab"),
        ('API_KEY="sk-quoted" # note\n', "sk-quoted"),
        ("export API_KEY='sk-single-c'  #note\n", "sk-single-c"),
        ("API_KEY=sk-hash#kept\n", "sk-hash#kept"),  # '#' starts a comment only after whitespace
        ("\ufeffAPI_KEY=sk-bom\r\n", "sk-bom"),  # a UTF-8 byte order mark (Windows editors)
    ],
)
def test_claude_env_formats(client_env, monkeypatch, text, key):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (_project() / "claude.env").write_text(text)
    cc.reset_client()
    assert cc.get_anthropic_api_key() == key


@pytest.mark.parametrize(
    "name, content",
    [
        ("ANTHROPIC_API_KEY.txt", "\ufeffsk-ant-file-key\r\n"),
        ("API_CREDENTIALS.json", '\ufeff{"anthropic_api_key": "sk-ant-file-key"}'),
        ("claude.env", "\ufeff# creds\nexport API_KEY=sk-ant-file-key   # production key\n"),
    ],
)
def test_key_files_with_bom_and_comments_authenticate(client_env, monkeypatch, name, content):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    client_env.configure(api_key="sk-ant-file-key")  # the emulator answers 401 to any other key
    (_project() / name).write_text(content, encoding="utf-8")
    cc.reset_client()
    assert cc.invoke_claude("hi") == "Echo: hi"
    assert [r.status for r in client_env.message_requests()] == [200]


def test_no_key_is_catchable_as_value_error_and_auth_error(client_env, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    cc.reset_client()
    with pytest.raises(ValueError) as as_value_error:  # the seed's contract
        cc.get_anthropic_api_key()
    with pytest.raises(ClaudeInvocationError) as as_library_error:
        cc.invoke_claude("hi")
    for err in (as_value_error.value, as_library_error.value):
        assert isinstance(err, MissingAPIKeyError) and err.kind == "auth" and not err.transient
        message = str(err)
        assert message.startswith("No Anthropic API key found")  # orchestrate relies on this prefix
        for place in ("ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY.txt", "API_CREDENTIALS.json", "claude.env",
                      "API_KEY=", cc.PROJECT_DIR_ENV):
            assert place in message
    clone = pickle.loads(pickle.dumps(as_value_error.value))
    assert type(clone) is MissingAPIKeyError and clone.kind == "auth" and str(clone) == str(as_value_error.value)
    with pytest.raises(ValueError):
        cc.invoke_parallel([{"prompt": "a"}])
    assert client_env.requests == []


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("ANTHROPIC_API_KEY.txt", b"   \n", "ANTHROPIC_API_KEY.txt is empty"),
        ("ANTHROPIC_API_KEY.txt", b"\xff\xfe bad utf-8", "Could not read.*ANTHROPIC_API_KEY.txt"),
        ("API_CREDENTIALS.json", b"{not json", "API_CREDENTIALS.json as JSON"),
        ("API_CREDENTIALS.json", b'{"other": "x"}', "anthropic_api_key"),
        ("claude.env", b"SOMETHING=else\n", "claude.env has no non-empty line API_KEY"),
        ("claude.env", b'API_KEY=""\n', "claude.env has no non-empty line API_KEY"),
        ("claude.env", b"API_KEY=\xff\xfe", "Could not read.*claude.env"),
        ("ANTHROPIC_API_KEY.txt", b"sk-a\nrotated 2025\n", r"ANTHROPIC_API_KEY.txt contains a line break"),
        ("API_CREDENTIALS.json", b'{"anthropic_api_key": "sk a"}',
         r"API_CREDENTIALS.json \(field 'anthropic_api_key'\) contains whitespace"),
        ("claude.env", b"API_KEY=sk-\x01x\n", r"claude.env \(line 1\) contains a control character"),
        ("claude.env", "API_KEY=sk-\u00e9\n".encode(), r"claude.env \(line 1\) contains a non-ASCII character"),
    ],
)
def test_every_unusable_key_file_raises_missing_key_error(client_env, monkeypatch, name, content, match):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    (_project() / name).write_bytes(content)
    cc.reset_client()
    with pytest.raises(MissingAPIKeyError, match=match) as info:
        cc.get_anthropic_api_key()
    assert isinstance(info.value, ValueError) and info.value.kind == "auth"
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    with pytest.raises(ValueError, match=match):
        cc.invoke_claude("hi")
    assert client_env.requests == []


# ------------------------------------------------------------------ models, JSON


def test_get_available_models_without_a_key_is_the_catalogue(monkeypatch, tmp_path):
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORCHESTRATING_AGENTS_PROJECT_DIR", str(tmp_path))  # no key file there
    cc.reset_client()
    models = cc.get_available_models()  # no key: nothing can be asked, nothing is sent
    assert models == list(cc.AVAILABLE_MODELS) and models[:4] == [
        "claude-fable-5-2", "claude-mythos-5-2", "claude-haiku-5-5", "claude-sonnet-5-5"]
    assert cc.DEFAULT_MODEL in models
    assert len(models) == len(set(models)) and all(isinstance(m, str) and m.startswith("claude-") for m in models)
    assert all(cc.estimate_cost(cc.Usage(1), m) is not None for m in models)  # every listed model is priced
    models.clear()
    assert cc.get_available_models()  # a fresh list each time


def test_get_available_models_reads_the_models_api(client_env):
    client_env.configure(extra_models={"claude-future-9": "claude-sonnet-5-5"})
    models = cc.get_available_models()
    listed = [r for r in client_env.requests if r.path == "/v1/models"]
    assert len(listed) == 1 and listed[0].method == "GET"
    assert "claude-future-9" in models and cc.DEFAULT_MODEL in models  # what the server says, not the catalogue
    assert models[0] == "claude-fable-5-2" and len(models) == len(set(models))
    assert client_env.message_requests() == []


def _model_entry(model_id: str, **changes) -> dict:
    entry = {"id": model_id, "type": "model", "display_name": model_id.upper(), "created_at": "2026-11-01T00:00:00Z",
             "lifecycle": "active"}
    entry.update(changes)
    return entry


@contextlib.contextmanager
def _models_server(pages: dict, status: int = 200) -> Iterator[list[str]]:
    """A tiny Models API: ``pages`` maps the ``after_id`` query (None first) to a page of ids."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            seen.append(self.path)
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            after = query.get("after_id", [None])[0]
            if status != 200:
                body = {"type": "error", "error": {"type": "not_found_error" if status == 404 else
                                                   "authentication_error", "message": "nope"}}
            else:
                ids = pages[after]
                keys = list(pages)
                has_more = keys.index(after) + 1 < len(keys)
                body = {"data": [_model_entry(i) for i in ids], "has_more": has_more, "first_id": ids[0],
                        "last_id": ids[-1]}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        seen.append(f"http://127.0.0.1:{server.server_address[1]}")
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def test_get_available_models_follows_every_page():
    with _models_server({None: ["claude-a", "claude-b"], "claude-b": ["claude-c"]}) as seen:
        models = cc.get_available_models(api_key="sk-ant-test-key", base_url=seen[0])
    assert models == ["claude-a", "claude-b", "claude-c", cc.DEFAULT_MODEL]  # the default stays among them
    queries = [urllib.parse.parse_qs(urllib.parse.urlparse(p).query) for p in seen[1:]]
    assert queries == [{"limit": ["1000"]}, {"limit": ["1000"], "after_id": ["claude-b"]}]


def test_get_available_models_falls_back_to_the_catalogue_or_raises_what_is_wrong():
    with _models_server({}, status=404) as seen:  # a server without /v1/models
        assert cc.get_available_models(api_key="sk-ant-test-key", base_url=seen[0]) == list(cc.AVAILABLE_MODELS)
    with _models_server({}, status=401) as seen:  # a bad key is the caller's to know
        with pytest.raises(ClaudeInvocationError) as info:
            cc.get_available_models(api_key="sk-ant-bad-key-123", base_url=seen[0])
    assert info.value.kind == "auth" and "sk-ant-bad-key-123" not in str(info.value)
    cc.configure(max_retries=0)
    try:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        assert cc.get_available_models(api_key="sk-ant-test-key", base_url=f"http://127.0.0.1:{port}") == list(
            cc.AVAILABLE_MODELS)  # nothing listening: the catalogue
    finally:
        cc.reset_client()


def test_get_model_info_from_the_catalogue_and_the_models_api(client_env):
    info = cc.get_model_info("claude-haiku-5-5")
    assert isinstance(info, cc.ModelInfo) and info.known and info.default_effort == "medium"
    assert info.pricing.input == pytest.approx(0.10) and info.min_cache_tokens == 512
    assert cc.get_model_info() is cc.get_model_info(cc.DEFAULT_MODEL)
    stranger = cc.get_model_info("claude-future-9")
    assert not stranger.known and stranger.pricing is None
    assert client_env.requests == []  # the catalogue: no request
    client_env.configure(extra_models={"claude-future-9": "claude-haiku-5-5"})
    merged = cc.get_model_info("claude-future-9", from_api=True)
    assert merged.efforts == ("low", "medium", "high", "xhigh", "max")  # what the API says
    assert merged.thinking_types == frozenset({"adaptive", "disabled"})
    assert merged.max_output == 128_000 and merged.pricing is None  # the rest: the cautious stand-in
    with pytest.raises(ClaudeInvocationError) as missing:
        cc.get_model_info("claude-nowhere-1", from_api=True)
    assert missing.value.status_code == 404
    for bad, error in (("", ValueError), (None, TypeError), (5, TypeError)):
        with pytest.raises(error, match="model"):
            cc.get_model_info(bad)
    with pytest.raises(TypeError, match="from_api"):
        cc.get_model_info("claude-haiku-5-5", from_api="yes")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n[1, 2]\n```', [1, 2]),
        ('  {"a": {"b": [true, null]}}  ', {"a": {"b": [True, None]}}),
        ('```JSON\n{"a": 1}\n```\n', {"a": 1}),
        ('```{"a": 1}```', {"a": 1}),
        ('```json {"a": [1, 2]} ```', {"a": [1, 2]}),  # line breaks lost (one-line fence)
        ('Here you go:\n```json\n{"k": "v"}\n```\nAnything else?', {"k": "v"}),
        ('{"code": "x\\n```\\ny"}', {"code": "x\n```\ny"}),
    ],
)
def test_parse_json_response(raw, expected):
    assert cc.parse_json_response(raw) == expected


def test_parse_json_response_errors():
    with pytest.raises(json.JSONDecodeError, match="not valid JSON"):
        cc.parse_json_response("Sure! The answer is 42 apples.")
    with pytest.raises(json.JSONDecodeError, match="not valid JSON"):
        cc.parse_json_response('```json\n{"a": 1,}\n```')
    with pytest.raises(json.JSONDecodeError, match="empty"):
        cc.parse_json_response("```json\n```")
    with pytest.raises(ValueError, match="object or array"):
        cc.parse_json_response("42")
    with pytest.raises(TypeError, match="raw must be a str"):
        cc.parse_json_response(b'{"a": 1}')  # type: ignore[arg-type]


def test_invoke_claude_json(client_env):
    client_env.script("give me json", '```json\n{"a": 1}\n```')
    assert cc.invoke_claude_json("give me json") == {"a": 1}
    body = client_env.message_requests()[-1].body
    assert body["messages"] == [{"role": "user", "content": "give me json"}] and "stream" not in body
    client_env.script("list please", "[1, 2, 3]")
    assert cc.invoke_claude_json("list please", system="JSON only", max_tokens=50, streaming=True) == [1, 2, 3]
    streamed = client_env.message_requests()[-1]
    assert streamed.stream and streamed.body["system"] == "JSON only" and streamed.body["max_tokens"] == 50
    with pytest.raises(json.JSONDecodeError):
        cc.invoke_claude_json("no script here")  # the echo reply is not JSON
    with pytest.raises(ClaudeInvocationError) as info:
        cc.invoke_claude_json("give me json [[fail=400]]")
    assert info.value.kind == "bad_request"
    count = len(client_env.requests)
    with pytest.raises(ValueError, match="max_tokens"):
        cc.invoke_claude_json("give me json", max_tokens=0)
    assert len(client_env.requests) == count


# ------------------------------------------------------------------ error kinds


def test_batch_error_kinds_are_accepted_and_not_transient():
    for kind in ("batch_errored", "batch_expired", "batch_canceled"):
        assert kind in cc.ERROR_KINDS and kind in (ClaudeInvocationError.__doc__ or "")
        err = ClaudeInvocationError("item failed", kind=kind)
        assert err.kind == kind and not err.transient
        assert pickle.loads(pickle.dumps(err)).kind == kind
    with pytest.raises(ValueError, match="kind must be one of"):
        ClaudeInvocationError("x", kind="batch_exploded")


def test_message_batches_builds_kinds_at_construction():
    import message_batches

    assert not hasattr(message_batches, "_batch_error")
    source = Path(message_batches.__file__).read_text()
    assert ".kind = " not in source


# ------------------------------------------------------------------ _normalize_prompts fast paths


def _norm(prompts, **kwargs):
    defaults = dict(shared_system=None, cache_shared_system=False, model=cc.DEFAULT_MODEL, max_tokens=64)
    defaults.update(kwargs)
    return _requests.prompt_specs(prompts, **defaults)


def test_normalize_accepts_any_mapping_and_builds_the_same_params():
    proxy = types.MappingProxyType(
        {"prompt": "hello", "system": "own", "cache_prompt": True, "temperature": 1.0, "effort": "low"}
    )
    (spec,) = _norm([proxy], shared_system="shared", cache_shared_system=True)
    cached = {"type": "ephemeral"}
    assert spec.params == {
        "model": cc.DEFAULT_MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": cached}]}],
        "output_config": {"effort": "low"},
        "system": [{"type": "text", "text": "shared", "cache_control": cached}, {"type": "text", "text": "own"}],
    }  # temperature 1.0 (the seed default) is not sent
    specs = _norm([{"prompt": "a", "model": "claude-haiku-4-5", "max_tokens": 9, "tag": 1}], extra_keys=frozenset({"tag"}))
    assert specs[0].params["model"] == "claude-haiku-4-5" and specs[0].params["max_tokens"] == 9
    assert specs[0].extra == {"tag": 1} and _norm([{"prompt": "b"}])[0].extra == {}


def test_normalize_still_names_index_and_key():
    with pytest.raises(TypeError, match=r"prompts\[1\]\['cache_prompt'\]"):
        _norm([{"prompt": "a"}, {"prompt": "b", "cache_prompt": "yes"}])
    with pytest.raises(TypeError, match=r"prompts\[0\]\['cache_system'\]"):
        _norm([{"prompt": "a", "cache_system": 1}])
    with pytest.raises(ValueError, match=r"prompts\[2\]\['model'\]"):
        _norm([{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c", "model": ""}])
    with pytest.raises(TypeError, match=r"prompts\[0\]\['max_tokens'\]"):
        _norm([{"prompt": "a", "max_tokens": 5.0}])
    with pytest.raises(ValueError, match=r"prompts\[0\]\['temperature'\]"):
        _norm([{"prompt": "a", "temperature": 1.5}])
    with pytest.raises(ValueError, match=r"prompts\[0\] has unknown key 'colour'"):
        _norm([{"prompt": "a", "colour": "red"}])
    four = [{"type": "text", "text": f"b{i}", "cache_control": {"type": "ephemeral"}} for i in range(4)]
    with pytest.raises(ValueError, match=r"prompts\[0\] carries 5 cache_control blocks"):
        _norm([{"prompt": "a", "system": four}], shared_system="s", cache_shared_system=True)
    with pytest.raises(ValueError, match=r"prompts\[0\] carries 5 cache_control blocks"):
        _norm([{"prompt": "a", "system": four, "cache_prompt": True}])
    assert len(_norm([{"prompt": "a", "system": four}])[0].params["system"]) == 4  # exactly 4 is fine
