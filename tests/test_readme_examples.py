"""Every code example in README.md runs, as a reader would paste it, against a live gateway.

The blocks are read from README.md when the test runs, so what is tested is what the README
says today: an edit to an example is tested by the next run, and an example that drifts from
the gateway or the SDKs fails here.

Conventions (a README block that follows none of them fails ``test_every_block_is_accounted_for``):

- ```python blocks run with this interpreter (the official ``openai`` SDK), ```js blocks with
  Node and the official ``openai`` npm package of tests/node, ```bash blocks with bash (curl).
  Each block is self-contained (its own imports and client), since readers copy one block.
  ``http://127.0.0.1:8000`` is replaced by the test gateway's URL; a block runs in an empty
  folder, must exit 0 and print something, and prints no OpenAI error envelope.
- A block that is not an example to run carries a non-code info string (```text, ```toml,
  ```json), or, if it is code that must not run here (it starts a server, installs things),
  the line ``<!-- not-run: <reason> -->`` right above it. The reason is required.
- Blocks in a section listed in ``RUN_ELSEWHERE`` are run by that section's own tests (which
  must exist and read the README themselves); they are not run twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import NODE_DIR, ROOT

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
DOCUMENTED_URL = "http://127.0.0.1:8000"
RUNNERS = {"python", "js", "bash"}
NOT_CODE = {"text", "toml", "json", "html"}
# Sections whose examples another test runs (it extracts them from the README itself).
RUN_ELSEWHERE = {"Realtime": ["tests/test_realtime.py", "tests/test_realtime_node.py",
                             "tests/test_realtime_transcription_sessions.py"],
                "Voice in the browser": ["tests/test_realtime_browser.py"]}
# What some examples must print beyond "something": (a phrase of the block, a pattern).
EXPECTED_OUTPUT = [
    ("def get_weather", r"called get_weather\(.*Paris.*\) -> .*sunny[\s\S]*answer: \S"),
    ("delta.audio", r"[1-9][0-9.]* s of audio"),
]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S[^>]*?)\s*-->\s*$")


@dataclass
class Block:
    language: str
    code: str
    line: int
    section: str
    not_run: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^## (.+)$", before, re.M)
        section = headings[-1].strip() if headings else ""
        previous = before.rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(previous)
        blocks.append(Block(
            language=match.group(1).strip(), code=match.group(2), line=before.count("\n") + 1,
            section=section, not_run=marker.group(1) if marker else None,
        ))
    return blocks


def runnable(text: str) -> list[Block]:
    return [
        block for block in readme_blocks(text)
        if block.language in RUNNERS and block.not_run is None
        and not any(block.section.startswith(name) for name in RUN_ELSEWHERE)
    ]


BLOCKS = runnable(README.read_text())


def test_every_block_is_accounted_for():
    """No block is skipped silently: each one is run here, run by its section's own test,
    plain non-code text, or marked not-run with a reason."""
    for block in readme_blocks(README.read_text()):
        assert block.language in RUNNERS | NOT_CODE, (
            f"README.md line {block.line}: info string {block.language!r}; use one of "
            f"{sorted(RUNNERS | NOT_CODE)} (see this file's docstring)"
        )
        if block.not_run is not None:
            assert block.language in RUNNERS, f"line {block.line}: not-run marks code blocks only"
    for section, tests in RUN_ELSEWHERE.items():
        assert f"## {section}" in README.read_text(), f"README has no {section!r} section any more"
        for path in tests:
            assert "README.md" in (ROOT / path).read_text() or "readme_blocks" in (ROOT / path).read_text(), (
                f"{path} no longer runs the README's {section} examples"
            )
    assert {block.language for block in BLOCKS} >= RUNNERS, "each SDK has at least one example"


def test_conventions_are_read_as_documented():
    """The parser itself: a marker with a reason excludes a block, one without does not."""
    text = (
        "## A\n<!-- not-run: starts a server -->\n```bash\nserve\n```\n\n"
        "<!-- not-run: -->\n```python\nprint(1)\n```\n```text\nx\n```\n## Realtime (ws)\n```js\nx\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.language, b.not_run, b.section) for b in blocks] == [
        ("bash", "starts a server", "A"), ("python", None, "A"), ("text", None, "A"), ("js", None, "Realtime (ws)"),
    ]
    assert [b.language for b in runnable(text)] == ["python"]


def _run(block: Block, base_url: str, folder: Path, node: str | None) -> subprocess.CompletedProcess:
    code = block.code.replace(DOCUMENTED_URL, base_url)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "OPENAI_API_KEY": "sk-local"}
    if block.language == "python":
        command = [sys.executable, "-c", code]
    elif block.language == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        script = NODE_DIR / f".readme-{os.getpid()}-{block.line}.mjs"  # beside node_modules
        script.write_text(code)
        try:
            return subprocess.run([node, str(script)], cwd=folder, capture_output=True, text=True,
                                  timeout=300, env=env)
        finally:
            script.unlink()
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300, env=env)


def _ids(blocks: list[Block]) -> list[str]:
    """Section and position, which an edit elsewhere in the README does not shift."""
    seen: dict[str, int] = {}
    ids = []
    for block in blocks:
        section = re.sub(r"\W+", "-", block.section).strip("-").lower()
        seen[section] = seen.get(section, 0) + 1
        ids.append(f"{section}-{seen[section]}-{block.language}")
    return ids


@pytest.mark.parametrize("block", BLOCKS, ids=_ids(BLOCKS))
def test_readme_example_runs(block: Block, server, tmp_path, request):
    node = request.getfixturevalue("node_sdk") if block.language == "js" else None
    result = _run(block, server.url, tmp_path, node)
    where = f"README.md line {block.line} ({block.language})"
    assert result.returncode == 0, f"{where} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip(), f"{where} printed nothing; examples show their result"
    assert '"error"' not in result.stdout, f"{where} got an error:\n{result.stdout[-2000:]}"
    for phrase, pattern in EXPECTED_OUTPUT:
        if phrase in block.code:
            assert re.search(pattern, result.stdout), f"{where} printed:\n{result.stdout[-2000:]}"
    for seconds in re.findall(r"([0-9.]+) s of audio", result.stdout):
        assert float(seconds) > 0, f"{where} got no audio:\n{result.stdout[-2000:]}"
