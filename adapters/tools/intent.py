"""A deterministic tool router for ``tool_choice="auto"``: call a tool, and which, or answer.

Why: the embedded 135M chat model cannot make this decision. Left free (even with the
tools described in its prompt) it calls a tool for "tell me a joke" and picks the wrong
one for plain requests, while it fills in arguments well once the tool is fixed. So the
decision is taken here, by a rule anyone can read, and the model only writes arguments.

The policy is **demo-grade keyword matching**, not language understanding:

* If the conversation ends with a ``tool`` message (a result came back), answer in text.
* Otherwise take the last ``user`` message and split it into lowercase words.
* Describe each tool by words: its name split on ``_``/``-``/camelCase (weight 2), the
  words of its description, its top-level parameter names and their string enum values
  (weight 1), and its parameters' descriptions (weight 0.5). Very common words ("get",
  "set", "the", "what", ...) are ignored on both sides, plural ``s`` is dropped.
* A tool's score is the sum, over the distinct words of the message, of the highest
  weight that word has for the tool. Tools scoring at least ``threshold`` (default 2: one
  name word, or two other matches) are returned, best first.

It fails in the obvious ways: synonyms it does not list ("forecast" for a tool named
``get_weather`` with no such word in its description), negations ("don't set a timer"),
and messages that mention a tool's words without asking for it. Clients that need
reliable choices should send ``tool_choice="required"`` or a named tool.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from adapters.chat.messages import ChatMessage, ToolSpec

DEFAULT_THRESHOLD = 2.0

_NAME_WEIGHT = 2.0
_WORD_WEIGHT = 1.0
_PARAM_DESCRIPTION_WEIGHT = 0.5

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[^\W\d_]+|\d+")

STOPWORDS = frozenset(
    """
    a an the and or but if then else of to in on at by for from with without into onto
    about as is are was were be been being am do does did done doing have has had having
    i me my mine we us our you your yours he him his she her it its they them their this
    that these those there here what whats which who whom whose when where why how
    can could would should will shall may might must please pls kindly just also too
    very really so some any all no not yes ok okay now like want wants need needs get
    gets got set sets give gives tell show make let lets call use using run find
    s t d ll re ve m
    """.split()
)


def words(text: str) -> list[str]:
    """Lowercase words of ``text`` (identifiers split on ``_``, ``-`` and camelCase), with
    stopwords removed and a plural ``s`` dropped."""
    out = []
    for raw in _WORD.findall(_CAMEL.sub(" ", text)):
        word = _normalize(raw.lower())
        if word and word not in STOPWORDS:
            out.append(word)
    return out


def tool_vocabulary(tool: ToolSpec) -> dict[str, float]:
    """The words that point at ``tool``, each with its weight."""
    vocabulary: dict[str, float] = {}

    def add(text: str, weight: float) -> None:
        for word in words(text):
            vocabulary[word] = max(vocabulary.get(word, 0.0), weight)

    add(tool.name, _NAME_WEIGHT)
    add(tool.description or "", _WORD_WEIGHT)
    properties = (tool.parameters or {}).get("properties") or {}
    if isinstance(properties, dict):
        for param, schema in properties.items():
            add(param, _WORD_WEIGHT)
            if isinstance(schema, dict):
                for value in schema.get("enum") or ():
                    if isinstance(value, str):
                        add(value, _WORD_WEIGHT)
                add(str(schema.get("description") or ""), _PARAM_DESCRIPTION_WEIGHT)
    return vocabulary


def score_tools(text: str, tools: Sequence[ToolSpec]) -> dict[str, float]:
    """Each tool's score for the request ``text``."""
    asked = set(words(text))
    scores = {}
    for tool in tools:
        vocabulary = tool_vocabulary(tool)
        scores[tool.name] = sum(vocabulary.get(word, 0.0) for word in asked)
    return scores


def tools_asked_for(
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[str]:
    """Names of the tools the conversation's last turn asks for, best first; empty when
    the answer should be text."""
    if not tools or not messages or messages[-1].role == "tool":
        return []
    text = _last_user_text(messages)
    if not text:
        return []
    scores = score_tools(text, tools)
    order = {tool.name: i for i, tool in enumerate(tools)}
    chosen = [name for name, score in scores.items() if score >= threshold]
    return sorted(chosen, key=lambda name: (-scores[name], order[name]))


def _last_user_text(messages: Iterable[ChatMessage]) -> str:
    for message in reversed(list(messages)):
        if message.role == "user":
            return message.content or ""
    return ""


def _normalize(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word
