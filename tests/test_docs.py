"""The docs run: every ```python block in the user-facing docs executes against the emulator,
and references/api-reference.md documents exactly the public names of every module.
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
DOCS = [ROOT / "SKILL.md", ROOT / "MIGRATION.md", ROOT / "README.md", *sorted((ROOT / "references").glob("*.md"))]
MODULES = ["claude_client", "task_state", "orchestration", "message_batches", "anthropic_emulator", "orchestrate"]
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

# Runs the blocks of one document in order, in one namespace, naming the block that failed.
_DRIVER = textwrap.dedent(
    """
    import json, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    ns = {"__name__": "__main__"}
    for line, source in blocks:
        try:
            exec(compile(source, f"{sys.argv[2]}:{line}", "exec"), ns)
        except SystemExit:
            raise
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: the python block at {sys.argv[2]}:{line}", file=sys.stderr)
            sys.exit(1)
    print(f"ran {len(blocks)} blocks")
    """
)


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


def _docs_with_blocks() -> list[Path]:
    return [p for p in DOCS if p.exists() and _python_blocks(p)]


def test_examples_have_no_placeholders() -> None:
    for path in DOCS:
        if not path.exists():
            continue
        for line, source in _python_blocks(path):
            assert "..." not in source, f"{path.name}:{line} has a '...' placeholder"
            sleeps = [float(s) for s in re.findall(r"time\.sleep\(([\d.]+)\)", source)]
            assert all(s <= 3 for s in sleeps), f"{path.name}:{line} sleeps too long"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("doc", _docs_with_blocks(), ids=lambda p: p.name)
def test_doc_examples_run(doc: Path, emulator, tmp_path: Path) -> None:
    import json

    blocks = _python_blocks(doc)
    blocks_file = tmp_path / "blocks.json"
    blocks_file.write_text(json.dumps(blocks))
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        ANTHROPIC_BASE_URL=emulator.base_url,
        ANTHROPIC_API_KEY="sk-ant-docs-key",
        ORCHESTRATING_AGENTS_PROJECT_DIR=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(SCRIPTS), env.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, str(driver), str(blocks_file), doc.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert f"ran {len(blocks)} blocks" in proc.stdout


def _documented_names() -> set[tuple[str, str]]:
    text = (ROOT / "references" / "api-reference.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,4} `(\w+)\.(\w+)`", text, re.M))


def test_every_public_name_is_documented() -> None:
    documented = _documented_names()
    missing = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__"):
            if (module_name, name) not in documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not documented in references/api-reference.md: {missing}"


def test_every_documented_name_exists() -> None:
    documented = _documented_names()
    assert documented, "references/api-reference.md documents no names"
    ghosts = []
    for module_name, name in sorted(documented):
        module = importlib.import_module(module_name)
        if name not in getattr(module, "__all__", ()) or not hasattr(module, name):
            ghosts.append(f"{module_name}.{name}")
    assert not ghosts, f"documented but not public: {ghosts}"


def test_skill_md_frontmatter_and_budget() -> None:
    text = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "SKILL.md needs YAML frontmatter"
    front = match.group(1)
    assert re.search(r"^name: orchestrating-agents$", front, re.M)
    desc = re.search(r"^description: (.+)$", front, re.M)
    assert desc and 0 < len(desc.group(1)) <= 1024
    assert re.search(r"^\s+version: \S+", front, re.M), "metadata version missing"
    assert len(text) / 4 <= 2500, f"SKILL.md is {len(text) / 4:.0f} tokens (budget 2,500)"


# --- added by the docs owner: signatures, frontmatter syntax, links -------------------------

_HEADING = re.compile(r"^#{2,4} `(\w+)\.(\w+)`.*$", re.M)


def _reference_sections() -> dict[tuple[str, str], str]:
    """``{(module, name): text of its section}`` of references/api-reference.md."""
    text = (ROOT / "references" / "api-reference.md").read_text(encoding="utf-8")
    heads = list(_HEADING.finditer(text))
    sections = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.end():end]
        nxt = re.search(r"^#{1,4} ", body, re.M)  # a plain heading (e.g. a module's) ends it too
        sections[(m.group(1), m.group(2))] = body[: nxt.start()] if nxt else body
    return sections


def _split_top_level(params: str) -> list[str]:
    parts, depth, quote, current = [], 0, "", []
    for ch in params:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _documented_params(section: str, name: str) -> list[str] | None:
    """Parameter names of the first ``name(...)`` in the section; None if absent or ``(...)``."""
    m = re.search(rf"(?<![\w.]){re.escape(name)}\(", section)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth and i < len(section):
        depth += {"(": 1, ")": -1}.get(section[i], 0)
        i += 1
    inner = " ".join(section[m.end(): i - 1].split())
    if inner == "...":
        return None
    names = []
    for part in _split_top_level(inner):
        if part in ("*", "/"):
            continue
        names.append(re.split(r"[=:]", part, maxsplit=1)[0].strip().lstrip("*"))
    return names


def test_documented_signatures_match_code() -> None:
    """The first ``name(...)`` in each api-reference section lists the code's parameters, in order."""
    import inspect

    checked, wrong = 0, []
    for (module_name, name), section in sorted(_reference_sections().items()):
        obj = getattr(importlib.import_module(module_name), name, None)
        if not callable(obj):
            continue
        documented = _documented_params(section, name)
        if documented is None:
            continue
        try:
            actual = [p.name for p in inspect.signature(obj).parameters.values()]
        except (TypeError, ValueError):
            continue
        checked += 1
        if documented != actual:
            wrong.append(f"{module_name}.{name}: documented {documented}, code {actual}")
    assert checked >= 30, f"only {checked} signatures found in references/api-reference.md"
    assert not wrong, "signatures in references/api-reference.md differ from the code:\n" + "\n".join(wrong)


def test_skill_md_frontmatter_is_plain_yaml() -> None:
    """The description is a valid plain YAML scalar (skill loaders parse the frontmatter as YAML)."""
    text = (ROOT / "SKILL.md").read_text(encoding="utf-8")
    front = re.match(r"^---\n(.*?)\n---\n", text, re.S).group(1)
    desc = re.search(r"^description: (.+)$", front, re.M).group(1)
    assert ": " not in desc and " #" not in desc, "a ': ' or ' #' in the description breaks YAML"
    assert desc[0] not in "!&*[]{}|>'\"%@`,?:-#", "the description must not start with a YAML indicator"
    assert re.search(r"^metadata:\n  version: \S+$", front, re.M), "metadata.version missing"


def test_relative_links_resolve() -> None:
    for path in DOCS:
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # code is not links
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file_part = target.split("#", 1)[0]
            assert (path.parent / file_part).exists(), f"{path.name}: broken link {target}"
