"""ConversationThread: a multi-turn conversation whose growing history is read from the cache.

Each request is built by the one builder (:func:`_requests.single_request`, which checks the
API's rules) and sent through the one send path (:func:`_transport.send`). The assistant's
content, thinking blocks included, goes back to the API exactly as it came.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

from _agent import Agent, ToolOptions
from _errors import ClaudeInvocationError
from _interrupt import InterruptToken, check_token
from _models import DEFAULT_MODEL
from _requests import (
    MAX_CACHE_BREAKPOINTS,
    check_messages,
    content_blocks,
    count_breakpoints,
    mark_user_messages,
    single_request,
    system_blocks,
)
from _results import ClaudeResponse, Usage
from _structured import OutputSpec
from _tools import ToolSet
from _transport import default_policy, get_client
from _validation import check_bool, check_callable, check_optional_seconds, check_positive_int

logger = logging.getLogger("claude_client._conversation")

_SAVE_FORMAT = "orchestrating-agents/conversation"
_SAVE_VERSION = 2  # 2: the tool names and the effort / thinking settings are saved
_SETTINGS = (
    "system",
    "model",
    "max_tokens",
    "temperature",
    "cache_system",
    "max_turns",
    "continuation_prompt",
    "effort",
    "thinking",
)

DEFAULT_CONTINUATION_PROMPT = "Continue from where you left off."


class ConversationThread:
    """A multi-turn conversation with prompt caching of the growing history.

    Each request carries cache breakpoints on the system prompt (``cache_system``), on the
    latest user message and on the previous user message, so turn n reads turns 1..n-1 from the
    cache (never more than 4 breakpoints). A failed send (error, interrupt, stall) leaves the
    history untouched, so the same message can be sent again. Concurrent sends on one object
    are serialized (a lock; each waits for the previous one). A send once ``max_turns`` turns
    are done raises ``RuntimeError`` before sending (the seed's behaviour) and keeps the
    history; ``clear()`` it or start a new thread to go on.

    ``len(thread)`` and ``turn_count`` are the number of completed turns (user + assistant
    pairs, ``len(messages) // 2``); ``messages`` is a copy of the history. The attributes
    ``system``, ``cache_system``, ``model``, ``max_tokens``, ``effort`` and ``thinking`` may be
    changed between sends: each request is built (and validated) from their current values.

    ``effort`` / ``thinking`` (as in :func:`invoke_claude`) are the thread's defaults; each send
    may override them. The assistant's replies are kept whole, thinking blocks included, and sent
    back unchanged (the API requires it). ``usage`` / ``cost_usd`` sum every request the thread
    sent, failed ones that were paid for (a refusal) included. ``temperature`` stays for
    compatibility; any value but 1.0 is refused (the API removed it: use ``effort``).

    >>> chat = ConversationThread(system="You are a tutor.", max_turns=20, effort="medium")
    >>> chat.send("What is a monad?")
    >>> chat.send("Give an example in Python.", effort="high")
    >>> chat.turn_count, len(chat), len(chat.messages)
    (2, 2, 4)
    """

    def __init__(
        self,
        system: Union[str, list, None] = None,
        model: str = DEFAULT_MODEL,
        max_tokens: int = 4096,
        temperature: float = 1.0,
        cache_system: bool = True,
        max_turns: Optional[int] = None,
        continuation_prompt: Optional[str] = None,
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        tools: Optional[list] = None,
        max_tool_turns: int = 10,
        tool_timeout: Optional[float] = None,
        parallel_tools: bool = False,
        on_tool_call: Optional[Callable[[Any], Any]] = None,
        effort: Optional[str] = None,
        thinking: Union[str, dict, None] = None,
    ) -> None:
        self._tools = ToolSet.from_user(tools)
        self._tool_options = ToolOptions.checked(max_tool_turns, tool_timeout, parallel_tools, on_tool_call)
        if max_turns is not None:
            check_positive_int(max_turns, "max_turns")
        if continuation_prompt is not None:
            if not isinstance(continuation_prompt, str):
                raise TypeError(f"continuation_prompt must be a str or None, got {type(continuation_prompt).__name__}")
            if not continuation_prompt.strip():
                raise ValueError("continuation_prompt must be a non-empty string or None")
        self.system = copy.deepcopy(system)
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.cache_system = cache_system
        self.effort = effort
        self.thinking = copy.deepcopy(thinking)
        self._messages: list[dict] = []
        self._bound_system = _binding_of(system)  # the system prompt the history's thinking is bound to
        self._params("check", False)  # validates the settings now; they are checked again per request
        self.max_turns = max_turns
        self.continuation_prompt = continuation_prompt or DEFAULT_CONTINUATION_PROMPT
        self._api_key = api_key
        self._base_url = base_url
        self._lock = threading.Lock()
        self.usage = Usage()
        #: Summed cost of every reply of this thread (None once a model has no known price).
        self.cost_usd: Optional[float] = 0.0

    @property
    def turn_count(self) -> int:
        """Completed turns (user + assistant pairs), ``len(messages) // 2``."""
        return len(self._messages) // 2

    def __len__(self) -> int:
        """The number of completed turns (user + assistant pairs), like the seed's ``len(thread)``."""
        return self.turn_count

    @property
    def messages(self) -> list[dict]:
        """A deep copy of the history (read-only view; same as :meth:`get_messages`).

        >>> [m["role"] for m in chat.messages]
        ['user', 'assistant']
        """
        return self.get_messages()

    def get_messages(self) -> list[dict]:
        """A deep copy of the history (``[{"role", "content": [blocks]}]``)."""
        with self._lock:
            return copy.deepcopy(self._messages)

    def clear(self) -> None:
        """Forget the history and the turn count."""
        with self._lock:
            self._messages = []

    def _params(
        self,
        content: Any,
        cache_history: bool,
        effort: Any = None,
        thinking: Any = None,
        history: Optional[list[dict]] = None,
    ) -> dict:
        """The next request's body, from the current attributes (``chat.system = ...`` applies to
        the next request) and ``history`` (default: the thread's), built and validated by the one
        builder before anything is sent; ``effort`` / ``thinking`` override the thread's for this
        request. ``self.system`` and the history are never mutated: the cache marks go on copies."""
        check_bool(self.cache_system, "cache_system")
        system = system_blocks(self.system, "system", self.cache_system)
        messages = copy.deepcopy(self._messages if history is None else history)
        messages.append({"role": "user", "content": copy.deepcopy(content)})
        if cache_history:
            budget = MAX_CACHE_BREAKPOINTS - count_breakpoints(system) - count_breakpoints(messages)
            mark_user_messages(messages, 2, budget)
        return single_request(
            None,
            model=self.model,
            system=self.system,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            cache_system=self.cache_system,
            cache_prompt=False,
            messages=messages,
            extra={},
            effort=self.effort if effort is None else effort,
            thinking=self.thinking if thinking is None else thinking,
        )

    def _history_for(self, bound: str) -> list[dict]:
        """The history as the next request sends it. The API binds each thinking block to the
        transcript it was made in, system prompt included: after ``chat.system`` changed, the
        earlier turns' thinking blocks would be refused, so they are left out (as the API asks)."""
        if bound == self._bound_system or not any(_thinking_blocks(m) for m in self._messages):
            return self._messages
        logger.info(
            "The system prompt changed: the earlier turns' thinking blocks are left out of the history "
            "(the API binds them to the system prompt they were made under)"
        )
        return [
            {**m, "content": [b for b in m["content"] if b.get("type") not in _THINKING_TYPES]}
            if _thinking_blocks(m)
            else m
            for m in self._messages
        ]

    def _count(self, usage: Any, cost_usd: Optional[float]) -> None:
        """Add one request's usage and cost (None once a price is unknown) to the thread's."""
        if isinstance(usage, Usage):
            self.usage = self.usage + usage
            self.cost_usd = None if self.cost_usd is None or cost_usd is None else self.cost_usd + cost_usd

    def _send(
        self,
        user_message: Any,
        cache_history: bool,
        *,
        callback: Optional[Callable[[str], Any]] = None,
        stream: bool = False,
        interrupt_token: Optional[InterruptToken] = None,
        stall_timeout: Optional[float] = None,
        output_schema: Any = None,
        effort: Any = None,
        thinking: Any = None,
    ) -> ClaudeResponse:
        check_bool(cache_history, "cache_history")
        check_token(interrupt_token)
        stall = check_optional_seconds(stall_timeout, "stall_timeout")
        output = OutputSpec.from_user(output_schema)
        check_callable(callback, "callback")
        if isinstance(user_message, str):
            if not user_message.strip():
                raise ValueError("user_message must be a non-empty string")
            content: Any = user_message
            content_blocks(user_message, "user_message")  # validates (e.g. no lone surrogate)
        else:
            content = content_blocks(user_message, "user_message")
        with self._lock:
            if self.max_turns is not None and len(self._messages) // 2 >= self.max_turns:
                raise RuntimeError(
                    f"Maximum turns ({self.max_turns}) reached: this ConversationThread has max_turns="
                    f"{self.max_turns}; call clear() to start over or create a new ConversationThread "
                    f"(the history is kept)"
                )
            bound = _binding_of(self.system)
            history = self._history_for(bound)
            params = self._params(content, cache_history, effort, thinking, history)
            client = get_client(api_key=self._api_key, base_url=self._base_url)
            agent = Agent(
                client,
                policy=default_policy(client),
                interrupt=interrupt_token,
                stall_timeout=stall,
                tools=self._tools,
                output=output,
                tool_options=self._tool_options,
            )
            try:
                reply = agent.run(params, stream=stream, on_text=callback)
            except ClaudeInvocationError as error:  # a paid failure (a refusal ...) still counts
                self._count(getattr(error, "usage", None), getattr(error, "cost_usd", None))
                raise
            self._count(reply.usage, reply.cost_usd)
            # Only a successful reply changes the history (a failed tool loop leaves it as it was).
            # The API rejects empty text blocks, so they are not kept, and a reply with no content
            # leaves the history as it was.
            kept = _clean(reply.content)
            if all(block.get("type") in _THINKING_TYPES for block in kept):
                logger.warning("The reply had no content; the message was not added to the history (send it again)")
                return reply
            if reply.messages is not None:  # a tool loop: its whole transcript joins the history
                turns = [
                    {"role": m["role"], "content": _clean(content_blocks(m["content"], "message"))}
                    for m in reply.messages[len(history) :]
                ]
                self._messages = history + [t for t in turns if t["content"]]
            else:
                user = {"role": "user", "content": content_blocks(content, "user_message")}
                self._messages = history + [user, {"role": "assistant", "content": kept}]
            self._bound_system = bound
            return reply

    def send(
        self,
        user_message: Union[str, list],
        cache_history: bool = True,
        *,
        output_schema: Any = None,
        effort: Optional[str] = None,
        thinking: Union[str, dict, None] = None,
    ) -> ClaudeResponse:
        """Send a user message and return the reply (the history grows by two messages, or by the
        whole transcript of a tool loop). ``output_schema`` (a Pydantic model or a JSON schema)
        asks for a validated reply in ``reply.parsed``; ``effort`` / ``thinking`` override the
        thread's for this request.

        >>> chat.send("Now in one line.", effort="low").usage.thinking_tokens
        """
        return self._send(user_message, cache_history, output_schema=output_schema, effort=effort, thinking=thinking)

    def send_streaming(
        self,
        user_message: Union[str, list],
        callback: Optional[Callable[[str], Any]] = None,
        cache_history: bool = True,
        *,
        interrupt_token: Optional[InterruptToken] = None,
        stall_timeout: Optional[float] = None,
        effort: Optional[str] = None,
        thinking: Union[str, dict, None] = None,
    ) -> ClaudeResponse:
        """:meth:`send`, streaming each text chunk to ``callback`` (on this thread; thinking is
        not streamed to it)."""
        return self._send(
            user_message,
            cache_history,
            callback=callback,
            stream=True,
            interrupt_token=interrupt_token,
            stall_timeout=stall_timeout,
            effort=effort,
            thinking=thinking,
        )

    def send_continuation(
        self,
        guidance: Optional[str] = None,
        cache_history: bool = True,
        *,
        effort: Optional[str] = None,
        thinking: Union[str, dict, None] = None,
    ) -> ClaudeResponse:
        """Ask Claude to continue its last reply (e.g. after ``stop_reason == "max_tokens"``).

        Sends ``continuation_prompt`` (plus ``guidance`` on a new paragraph). Raises
        ``RuntimeError`` if nothing has been sent yet.
        """
        if guidance is not None and not isinstance(guidance, str):
            raise TypeError(f"guidance must be a str or None, got {type(guidance).__name__}")
        if not self._messages:
            raise RuntimeError("send_continuation() needs a previous send(): the conversation is empty")
        text = self.continuation_prompt if not guidance else f"{self.continuation_prompt}\n\n{guidance}"
        return self._send(text, cache_history, effort=effort, thinking=thinking)

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the transcript (thinking blocks byte for byte), settings, tool names, usage and
        cost to ``path`` as JSON, replaced atomically: a failed save leaves the old file and no
        temporary file behind. ``path`` naming a directory raises ``IsADirectoryError``.

        >>> chat.save("chat.json"); again = ConversationThread.load("chat.json", tools=[lookup])
        """
        target = Path(path)
        if target.is_dir():
            raise IsADirectoryError(
                errno.EISDIR, f"ConversationThread.save(path): {str(path)!r} is a directory; give a file path"
            )
        with self._lock:
            data = {
                "format": _SAVE_FORMAT,
                "version": _SAVE_VERSION,
                "settings": {name: getattr(self, name) for name in _SETTINGS},
                "tools": self._tools.names if self._tools is not None else [],
                "messages": self._messages,
                "usage": {k: getattr(self.usage, k) for k in Usage.__dataclass_fields__},
                "cost_usd": self.cost_usd,
            }
            text = json.dumps(data, ensure_ascii=False, indent=1)
        _write_atomically(target, text)

    @classmethod
    def load(
        cls,
        path: Union[str, os.PathLike[str]],
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        tools: Optional[list] = None,
    ) -> ConversationThread:
        """A thread saved by :meth:`save`, ready to continue (the key is never saved; nor are
        tools, which are functions: a thread saved with tools needs them again as ``tools=``,
        else ``ValueError`` naming the missing ones). A file whose messages are not a
        conversation the API accepts (e.g. the first one from the assistant) is refused with a
        ``ValueError`` naming the file.

        >>> again = ConversationThread.load("chat.json", tools=[lookup])
        >>> again.turn_count, again.cost_usd
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"could not read a saved ConversationThread from {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path} is not a file written by ConversationThread.save()")
        settings, raw, saved_usage = data.get("settings"), data.get("messages"), data.get("usage") or {}
        if not isinstance(settings, dict) or not isinstance(raw, list) or not isinstance(saved_usage, dict):
            raise ValueError(f"{path} is not a file written by ConversationThread.save() (settings / messages)")
        try:
            messages = check_messages(raw, "messages") if raw else []
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: the saved messages are not a conversation the API accepts: {exc}") from None
        toolset = ToolSet.from_user(tools)
        needed = data["tools"] if isinstance(data.get("tools"), list) else _tool_use_names(messages)
        missing = [name for name in needed if toolset is None or name not in toolset]
        if missing:
            raise ValueError(
                f"{path} was saved with the tools {needed}: pass them again with tools= "
                f"(missing: {', '.join(missing)}); tools are functions and are not saved"
            )
        thread = cls(**_loadable(settings, path), api_key=api_key, base_url=base_url, tools=tools)
        thread._messages = messages
        thread.usage = Usage(**{k: v for k, v in saved_usage.items() if k in Usage.__dataclass_fields__})
        thread.cost_usd = data.get("cost_usd")
        return thread

    def __repr__(self) -> str:
        turns, messages = len(self._messages) // 2, len(self._messages)
        return f"ConversationThread(model={self.model!r}, turns={turns}, messages={messages})"


ConversationThread.__module__ = "claude_client"


_THINKING_TYPES = ("thinking", "redacted_thinking")


def _thinking_blocks(message: dict) -> list:
    content = message.get("content")
    return [b for b in content if b.get("type") in _THINKING_TYPES] if isinstance(content, list) else []


def _binding_of(system: Any) -> str:
    """The system prompt as thinking blocks are bound to it: its text blocks, cache marks aside."""
    try:
        blocks = system_blocks(system, "system", False)
    except (TypeError, ValueError):  # refused when the request is built
        return repr(system)
    return json.dumps([{k: v for k, v in b.items() if k != "cache_control"} for b in blocks], sort_keys=True)


def _clean(blocks: list) -> list:
    """Content blocks to keep in the history: no cache marks (each request sets its own) and no
    empty text blocks (the API rejects them)."""
    kept = []
    for block in blocks:
        if block.get("type") == "text" and not block.get("text"):
            continue
        if "cache_control" in block:
            block = {k: v for k, v in block.items() if k != "cache_control"}
        kept.append(copy.deepcopy(block))
    return kept


def _write_atomically(target: Path, text: str) -> None:
    """``text`` to ``target`` through a temporary file in the same folder, then ``os.replace``;
    the temporary file is removed whatever fails (the disk, the rename, an interrupt)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tool_use_names(messages: list[dict]) -> list[str]:
    """The tools a history calls (a save of version 1 did not record its tools)."""
    names: dict[str, None] = {}
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            for block in content:
                if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                    names[block["name"]] = None
    return list(names)


def _loadable(settings: dict, path: Any) -> dict:
    """The saved settings this version takes; a sampling temperature the API no longer accepts
    (saved by an earlier version) is dropped with a warning."""
    kept = {name: settings[name] for name in _SETTINGS if name in settings}
    temperature = kept.get("temperature")
    if temperature is not None and temperature != 1.0:
        logger.warning(
            "%s was saved with temperature=%r, which the API no longer accepts: the thread uses the default "
            "(set effort= to steer the model)",
            path,
            temperature,
        )
        kept["temperature"] = 1.0
    return kept
