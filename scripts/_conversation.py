"""ConversationThread: a multi-turn conversation whose growing history is read from the cache.

Each request is built by the one builder (:func:`_requests.assemble`) and sent through the one
send path (:func:`_transport.send`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Union

from _agent import Agent, ToolOptions
from _interrupt import InterruptToken, check_token
from _requests import (
    DEFAULT_MODEL,
    MAX_CACHE_BREAKPOINTS,
    assemble,
    check_breakpoints,
    content_blocks,
    count_breakpoints,
    mark_user_messages,
    system_blocks,
)
from _results import ClaudeResponse, Usage
from _structured import OutputSpec
from _tools import ToolSet
from _transport import default_policy, get_client
from _validation import (
    check_bool,
    check_callable,
    check_model,
    check_optional_seconds,
    check_positive_int,
    check_temperature,
)

logger = logging.getLogger("claude_client._conversation")

_SAVE_FORMAT = "orchestrating-agents/conversation"
_SETTINGS = ("system", "model", "max_tokens", "temperature", "cache_system", "max_turns", "continuation_prompt")

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
    ``system``, ``cache_system``, ``model``, ``max_tokens`` and ``temperature`` may be changed
    between sends: each request is built (and validated) from their current values.

    >>> chat = ConversationThread(system="You are a tutor.", max_turns=20)
    >>> chat.send("What is a monad?")
    >>> chat.send("Give an example in Python.")
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
        self._system_blocks()  # validates the settings now; they are checked again per request
        self.max_turns = max_turns
        self.continuation_prompt = continuation_prompt or DEFAULT_CONTINUATION_PROMPT
        self._api_key = api_key
        self._base_url = base_url
        self._messages: list[dict] = []
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

    def _system_blocks(self) -> list[dict]:
        """Check the current settings (they are public attributes and may have been changed)
        and return fresh system blocks (``self.system`` is never mutated)."""
        check_model(self.model)
        check_positive_int(self.max_tokens, "max_tokens")
        check_temperature(self.temperature)
        check_bool(self.cache_system, "cache_system")
        return system_blocks(self.system, "system", self.cache_system)

    def _params(self, content: Any, cache_history: bool) -> dict:
        # From the current attributes: `chat.system = ...` / `chat.cache_system = ...` apply to
        # the next request (validated here, before anything is sent).
        system = self._system_blocks()
        messages = copy.deepcopy(self._messages)
        messages.append({"role": "user", "content": copy.deepcopy(content)})
        if cache_history:
            budget = MAX_CACHE_BREAKPOINTS - count_breakpoints(system) - count_breakpoints(messages)
            mark_user_messages(messages, 2, budget)
        params = assemble(self.model, self.max_tokens, messages, system, self.temperature)
        check_breakpoints(params, "the conversation request")
        return params

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
            params = self._params(content, cache_history)
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
            reply = agent.run(params, stream=stream, on_text=callback)
            self.usage = self.usage + reply.usage
            self.cost_usd = None if self.cost_usd is None or reply.cost_usd is None else self.cost_usd + reply.cost_usd
            # Only a successful reply changes the history (a failed tool loop leaves it as it was).
            # The API rejects empty text blocks, so they are not kept, and a reply with no content
            # leaves the history as it was.
            kept = _clean(reply.content)
            if not kept:
                logger.warning("The reply was empty; the message was not added to the history (send it again)")
                return reply
            if reply.messages is not None:  # a tool loop: its whole transcript joins the history
                turns = [
                    {"role": m["role"], "content": _clean(content_blocks(m["content"], "message"))}
                    for m in reply.messages[len(self._messages) :]
                ]
                self._messages.extend(t for t in turns if t["content"])
            else:
                self._messages.append({"role": "user", "content": content_blocks(content, "user_message")})
                self._messages.append({"role": "assistant", "content": copy.deepcopy(kept)})
            return reply

    def send(
        self, user_message: Union[str, list], cache_history: bool = True, *, output_schema: Any = None
    ) -> ClaudeResponse:
        """Send a user message and return the reply (the history grows by two messages, or by the
        whole transcript of a tool loop). ``output_schema`` (a Pydantic model or a JSON schema)
        asks for a validated reply in ``reply.parsed``."""
        return self._send(user_message, cache_history, output_schema=output_schema)

    def send_streaming(
        self,
        user_message: Union[str, list],
        callback: Optional[Callable[[str], Any]] = None,
        cache_history: bool = True,
        *,
        interrupt_token: Optional[InterruptToken] = None,
        stall_timeout: Optional[float] = None,
    ) -> ClaudeResponse:
        """:meth:`send`, streaming each text chunk to ``callback`` (on this thread)."""
        return self._send(
            user_message,
            cache_history,
            callback=callback,
            stream=True,
            interrupt_token=interrupt_token,
            stall_timeout=stall_timeout,
        )

    def send_continuation(self, guidance: Optional[str] = None, cache_history: bool = True) -> ClaudeResponse:
        """Ask Claude to continue its last reply (e.g. after ``stop_reason == "max_tokens"``).

        Sends ``continuation_prompt`` (plus ``guidance`` on a new paragraph). Raises
        ``RuntimeError`` if nothing has been sent yet.
        """
        if guidance is not None and not isinstance(guidance, str):
            raise TypeError(f"guidance must be a str or None, got {type(guidance).__name__}")
        if not self._messages:
            raise RuntimeError("send_continuation() needs a previous send(): the conversation is empty")
        text = self.continuation_prompt if not guidance else f"{self.continuation_prompt}\n\n{guidance}"
        return self._send(text, cache_history)

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write the transcript, settings, usage and cost to ``path`` (JSON, replaced atomically).

        >>> chat.save("chat.json"); again = ConversationThread.load("chat.json")
        """
        with self._lock:
            data = {
                "format": _SAVE_FORMAT,
                "version": 1,
                "settings": {name: getattr(self, name) for name in _SETTINGS},
                "messages": self._messages,
                "usage": {k: getattr(self.usage, k) for k in Usage.__dataclass_fields__},
                "cost_usd": self.cost_usd,
            }
            text = json.dumps(data, ensure_ascii=False, indent=1)
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)

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
        tools, which are functions: pass them again)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"could not read a saved ConversationThread from {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path} is not a file written by ConversationThread.save()")
        thread = cls(**data["settings"], api_key=api_key, base_url=base_url, tools=tools)
        thread._messages = data["messages"]
        thread.usage = Usage(**data["usage"])
        thread.cost_usd = data.get("cost_usd")
        return thread

    def __repr__(self) -> str:
        turns, messages = len(self._messages) // 2, len(self._messages)
        return f"ConversationThread(model={self.model!r}, turns={turns}, messages={messages})"


ConversationThread.__module__ = "claude_client"


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
