"""``--perspectives``: one review prompt per perspective over one piece of material.

The material goes in the shared system prompt (:func:`perspective_system`) so every request has
the same prefix and ``--cache`` lets all but the first read it from the prompt cache.
"""

from __future__ import annotations

from typing import Optional

from _cli_common import UsageError

__all__ = ["PERSPECTIVE_FOCUS", "perspective_prompts", "perspective_system"]

#: What a reviewer of each well-known perspective looks for (others get a generic focus).
PERSPECTIVE_FOCUS = {
    "security": "vulnerabilities, injection, authentication and authorisation, secrets handling, "
    "unsafe input, and data exposure",
    "performance": "algorithmic complexity, needless work, I/O and memory use, contention, and scalability limits",
    "correctness": "logic errors, edge cases, error handling, concurrency hazards, and broken invariants",
    "readability": "naming, structure, comments, and how easily a newcomer can follow it",
    "maintainability": "coupling, duplication, testability, and how safely it can be changed",
    "testing": "missing tests, weak assertions, untested edge cases, and flaky patterns",
    "architecture": "module boundaries, responsibilities, dependencies, and extension points",
    "reliability": "failure modes, retries, timeouts, resource cleanup, and recovery",
    "accessibility": "barriers for users of assistive technology, contrast, semantics, and keyboard use",
    "cost": "spend on compute, tokens, storage and network, and how to reduce it",
    "ux": "clarity, feedback, defaults, error messages, and the user's path to success",
    "documentation": "accuracy, completeness, examples, and what a reader still has to guess",
}


def perspective_prompts(names: str) -> list[dict]:
    """One prompt per perspective; the material itself goes in the shared system prompt.

    Putting the material in the shared system (before each perspective's own system block)
    gives every request the same prefix, so ``--cache`` lets N-1 of them read it from the cache.
    """
    perspectives = [n.strip() for n in names.split(",") if n.strip()]
    if not perspectives:
        raise UsageError("--perspectives: expected a comma-separated list, e.g. security,performance")
    seen: set[str] = set()
    items = []
    for name in perspectives:
        if name.lower() in seen:
            raise UsageError(f"--perspectives: {name!r} is listed twice")
        seen.add(name.lower())
        focus = PERSPECTIVE_FOCUS.get(name.lower(), f"everything that matters from the {name} point of view")
        system = (
            f"For this review you are an expert reviewer focused only on {name}. Look for {focus}. "
            f"Report concrete findings, most important first, each with where it is, why it "
            f"matters and a fix. Say plainly if you find nothing significant."
        )
        prompt = f"Review the material above from the {name} perspective."
        items.append({"prompt": prompt, "system": system, "task_id": name, "category": name})
    return items


def perspective_system(material: str, source: str, user_system: Optional[str]) -> str:
    """The shared system prompt of a review: the user's ``--system`` (if any), then the material."""
    head = (user_system.rstrip() + "\n\n") if user_system else ""
    return (
        f"{head}You review material for one perspective at a time. The material to review "
        f"({source}):\n\n<material>\n{material}\n</material>"
    )
