"""The emulator's thinking blocks: signatures bound to the transcript, and the round-trip checks.

A reply's thinking block carries an opaque, deterministic signature: an HMAC (with a secret of
the emulator) over the model, the transcript prefix before the assistant turn (system + messages,
canonical JSON: string content as one text block, ``cache_control`` and null fields left out)
and the block's text. A later request that sends the block back is checked:

* the signature does not verify for the block (its text or signature changed) -> 400 "cannot be
  modified" in the latest assistant turn, "Invalid `signature`" in an earlier one;
* it verifies but for another prefix (spliced from another conversation, or an earlier turn was
  edited) -> 400 "bound to a different conversation" (``block_binding.prefix_mismatch_behavior:
  drop_block`` with the binding beta drops it instead);
* it was made by another model -> silently dropped (accepted), as the API drops blocks it cannot read;
* an assistant turn the emulator issued with a thinking block comes back without it -> 400.

Private to :mod:`anthropic_emulator`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from typing import Any, Optional

from _emulator_wire import _ApiError, _compact

_SIG_PREFIX = "EmuSig1"
_MODEL_LEN, _PREFIX_LEN, _MAC_LEN = 6, 12, 18
_REDACTED_TEXT = "\x00redacted"
_THINKING_KINDS = ("thinking", "redacted_thinking")
#: How many issued assistant turns the emulator remembers for the "sent back without its thinking" check.
ISSUED_LIMIT = 8192


def _canon(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items() if k != "cache_control" and v is not None}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def canonical_content(content: Any) -> list[Any]:
    """A message's content as the prefix binding sees it (string -> one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return _canon(content) if isinstance(content, list) else []


def prefix_digests(body: dict[str, Any]) -> list[bytes]:
    """``digests[i]`` = the digest of the transcript before ``messages[i]`` (system + messages[:i])."""
    system = body.get("system")
    h = hashlib.sha256(b"emulator-transcript-v1\x00")
    h.update(_compact(canonical_content(system) if system is not None else []).encode())
    out = [h.digest()]
    for msg in body.get("messages") or []:
        h.update(b"\x00")
        h.update(_compact({"role": msg.get("role"), "content": canonical_content(msg.get("content"))}).encode())
        out.append(h.digest())
    return out


def _without_thinking(content: Any) -> str:
    return _compact([b for b in canonical_content(content) if not _is_thinking(b)])


def _is_thinking(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") in _THINKING_KINDS


class ThinkingSigner:
    """Signs the thinking blocks of one emulator and checks them when they come back.

    Not thread-safe on its own: the emulator calls it with its lock held.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._issued: OrderedDict[bytes, None] = OrderedDict()

    def clear(self) -> None:
        """Forget the issued turns (``reset()``); signatures stay valid."""
        self._issued.clear()

    def _model_bytes(self, model: str) -> bytes:
        return hashlib.sha256(model.encode()).digest()[:_MODEL_LEN]

    def _mac(self, model_b: bytes, prefix_b: bytes, text: str) -> bytes:
        msg = model_b + prefix_b + text.encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:_MAC_LEN]

    def sign(self, model: str, prefix: bytes, text: str) -> str:
        """The signature of a thinking block with ``text``, made by ``model`` after ``prefix``."""
        model_b, prefix_b = self._model_bytes(model), prefix[:_PREFIX_LEN]
        raw = model_b + prefix_b + self._mac(model_b, prefix_b, text)
        return _SIG_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _verify(self, signature: Any, text: Any, model: str, prefix: bytes) -> str:
        """``ok`` | ``tampered`` | ``other_model`` | ``other_prefix``."""
        if not isinstance(signature, str) or not isinstance(text, str) or not signature.startswith(_SIG_PREFIX):
            return "tampered"
        encoded = signature[len(_SIG_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            return "tampered"
        if len(raw) != _MODEL_LEN + _PREFIX_LEN + _MAC_LEN:
            return "tampered"
        model_b, prefix_b, mac = raw[:_MODEL_LEN], raw[_MODEL_LEN : _MODEL_LEN + _PREFIX_LEN], raw[-_MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(model_b, prefix_b, text)):
            return "tampered"
        if model_b != self._model_bytes(model):
            return "other_model"
        return "ok" if prefix_b == prefix[:_PREFIX_LEN] else "other_prefix"

    def _issued_key(self, model: str, prefix: bytes, content: Any) -> bytes:
        return hashlib.sha256(self._model_bytes(model) + prefix + _without_thinking(content).encode()).digest()

    def remember(self, model: str, prefix: bytes, content: list[dict[str, Any]]) -> None:
        """An assistant turn was issued with a thinking block: its return without one is a 400."""
        key = self._issued_key(model, prefix, content)
        self._issued[key] = None
        self._issued.move_to_end(key)
        while len(self._issued) > ISSUED_LIMIT:
            self._issued.popitem(last=False)

    def check(
        self, body: dict[str, Any], model: str, *, drop_mismatch: bool = False, binding_beta: bool = False
    ) -> None:
        """Raise the API's 400 for a thinking block that does not come back as it was issued."""
        messages = body["messages"]
        digests = prefix_digests(body)
        assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        latest = assistant[-1] if assistant else -1
        for i in assistant:
            content = messages[i].get("content")
            blocks = content if isinstance(content, list) else []
            has_thinking = False
            for j, block in enumerate(blocks):
                if not _is_thinking(block):
                    continue
                has_thinking = True
                redacted = block["type"] == "redacted_thinking"
                signature = block.get("data") if redacted else block.get("signature")
                text = _REDACTED_TEXT if redacted else block.get("thinking")
                status = self._verify(signature, text, model, digests[i])
                if status == "tampered":
                    raise _ApiError(400, _tampered(i, j, latest=i == latest))
                if status == "other_prefix" and not drop_mismatch:
                    raise _ApiError(400, _rebound(i, j, binding_beta))
            if not has_thinking and self._issued and self._issued_key(model, digests[i], content) in self._issued:
                raise _ApiError(
                    400,
                    f"messages.{i}.content: this assistant turn was returned with a `thinking` block, which is "
                    "missing. `thinking` and `redacted_thinking` blocks must be sent back unchanged, in their "
                    "original position, with the rest of the assistant turn.",
                )


def _tampered(i: int, j: int, *, latest: bool) -> str:
    if latest:
        return (
            f"messages.{i}.content.{j}: `thinking` or `redacted_thinking` blocks in the latest assistant message "
            "cannot be modified. These blocks must remain as they were in the original response."
        )
    return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block."


def _rebound(i: int, j: int, binding_beta: bool) -> str:
    text = (
        f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block. The block is bound to a different "
        'conversation. Remove the block, or set `thinking.block_binding.prefix_mismatch_behavior` to "drop_block".'
    )
    if not binding_beta:
        text += (
            " That setting requires the `thinking-binding-controls-2026-08-01` value in the `anthropic-beta` header."
        )
    return text


def summary_text(prompt: str) -> str:
    """The (deterministic) summarized thinking of a reply to ``prompt``."""
    words = prompt.split()
    if not words:
        return "Considering the request."
    return "Considering the request: " + " ".join(words[:12]) + (" ..." if len(words) > 12 else "")


def thinking_block(signer: ThinkingSigner, model: str, prefix: bytes, text: Optional[str]) -> dict[str, Any]:
    """A signed thinking block (``text`` None: display omitted, empty thinking)."""
    thinking = text or ""
    return {"type": "thinking", "thinking": thinking, "signature": signer.sign(model, prefix, thinking)}
