"""The Step-Audio-Chat prompt, built from the gateway's chat messages.

This reproduces ``StepAudio.apply_chat_template`` (upstream ``stepaudio.py``), the prompt the 130B
model was run with upstream:

* each message is a turn ``<|BOT|>{role}\\n{content}<|EOT|>``; turns are written back to
  back with no separator; the OpenAI ``user`` role is written ``human``, ``system`` and
  ``assistant`` stay, any other role passes through unchanged;
* a message whose content is None is an open turn ``<|BOT|>{role}\\n`` (no EOT) that the
  model continues. Only the last message can sensibly be one, so a None content elsewhere
  is written as an empty closed turn (upstream would leave a turn open mid-prompt);
* the prompt ends with ``<|BOT|>assistant\\n`` unless it already does;
* ``<s>`` is not written: the tokenizer adds it (``add_bos_token``).

Additions the reference asks a gateway to make ("What a gateway must implement"):

* **Tools** (item 6): with tools, a ``tool_json_schemas`` turn goes right after the leading
  system turn(s), or first when there is none; assistant tool calls and ``tool`` results
  are written as :mod:`.tools` describes. The Step-Audio 2 quirk of an empty, unterminated
  ``<|BOT|>system\\n`` before the schemas when there is no system message is deliberately
  not copied: it leaves a turn open mid-prompt.
* **History** (item 7, app.py): only the *current* user turn (the last user message) is
  sent as audio tokens. Earlier spoken turns are sent as their transcript ("14:1 context
  compression"), so a :class:`SpokenTurn` carries both.
* **System prompt**: upstream disagrees with itself. ``stepaudio.py`` injects nothing; the
  HF/vLLM chat template injects ``You are a helpful assistant.`` when the first message is
  not ``system``; app.py starts every chat with its own default. :class:`SystemPolicy`
  makes this a choice; the default, :attr:`SystemPolicy.REQUEST`, is the reference
  implementation's (inject nothing).
* **Turn injection**: vLLM tokenizes the prompt with special tokens recognised, so text that
  spells ``<|BOT|>``, ``<|EOT|>`` or ``<audio_N>`` would become those tokens (a user could
  close their turn and open a ``system`` one, or pass typed text off as audio). Every text
  that does not come from the gateway itself (messages, transcripts, tool calls, results and
  schemas, the configured system prompt) is :func:`~.special_tokens.neutralise`-d: a
  zero-width space after the ``<`` makes the tokenizer read ordinary characters, unless
  ``allow_special_tokens`` is set. Only the current spoken turn's own audio tokens stay
  tokens.

Upstream has no way to send text and audio in one turn (issue #122): a :class:`SpokenTurn`
is audio only; a caller with both must refuse the request or send two turns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence, Union

from adapters.chat.messages import ChatMessage, ToolSpec

from .audio_tokens import split_audio_tokens
from .special_tokens import EOT, neutralise, open_turn, turn
from .tools import (
    DEFAULT_RESULT_NAME,
    FUNCTION_OUTPUT,
    TOOL_SCHEMAS_ROLE,
    ToolResultFormat,
    render_tool_calls,
    tool_result_turn,
    tool_schemas_json,
)

GENERATION_PROMPT = open_turn("assistant")

#: The role names the model was trained with, by OpenAI role.
ROLE_NAMES = {"user": "human", "system": "system", "assistant": "assistant"}

#: Default system prompts seen upstream (its HF template, app and vLLM client).
HF_TEMPLATE_SYSTEM_PROMPT = "You are a helpful assistant."
APP_SYSTEM_PROMPT = "适配用户的语言，用简短口语化的文字回答"


@dataclass(frozen=True)
class SpokenTurn:
    """A user turn that was spoken: its ``<audio_N>`` token string and, once known, its
    transcript.

    It is sent as audio only while it is the current (last) user turn; as history it is
    sent as ``transcript``, which must then be set.
    """

    audio_tokens: str
    transcript: str | None = None

    role = "user"

    def __post_init__(self) -> None:
        if not self.audio_tokens:
            raise ValueError("a spoken turn needs audio tokens; the audio was empty")
        split_audio_tokens(self.audio_tokens)  # ValueError when malformed


class SystemPolicy(str, enum.Enum):
    """Where the system turn comes from. ``default_system`` is the configured prompt."""

    #: The request's system messages as they are; nothing injected (``stepaudio.py``).
    REQUEST = "request"
    #: The request's, or ``default_system`` when the first message is not ``system``
    #: (the HF/vLLM chat template, whose default is :data:`HF_TEMPLATE_SYSTEM_PROMPT`).
    DEFAULT_IF_MISSING = "default_if_missing"
    #: Always ``default_system``; the request's system messages are dropped.
    DEFAULT = "default"
    #: ``default_system``, then the request's leading system text, as one system turn
    #: joined by a newline (a gateway choice: upstream never has two system turns).
    COMBINE = "combine"


Message = Union[ChatMessage, SpokenTurn]


def build_prompt(
    messages: Sequence[Message],
    *,
    tools: Sequence[ToolSpec] = (),
    system_policy: SystemPolicy | str = SystemPolicy.REQUEST,
    default_system: str | None = None,
    tool_result_format: ToolResultFormat = FUNCTION_OUTPUT,
    allow_special_tokens: bool = False,
) -> str:
    """The prompt text for ``messages``, ending in ``<|BOT|>assistant\\n``.

    ``tools``: write a ``tool_json_schemas`` turn (pass none when ``tool_choice`` is
    ``"none"``). Raises ValueError for a policy that needs a missing ``default_system`` or
    an earlier spoken turn without a transcript.
    """
    policy = SystemPolicy(system_policy)
    if policy is not SystemPolicy.REQUEST and default_system is None:
        raise ValueError(f"system policy {policy.value!r} needs a default_system prompt")
    clean = _keep if allow_special_tokens else neutralise

    lead = 0
    while lead < len(messages) and messages[lead].role == "system":
        lead += 1
    system_turns, rest = _system_turns(messages[:lead], policy, default_system), messages[lead:]
    if policy is SystemPolicy.DEFAULT:
        rest = [message for message in rest if message.role != "system"]

    current_user = max((i for i, m in enumerate(rest) if m.role == "user"), default=-1)
    call_names: dict[str, str] = {}
    parts = [turn("system", clean(text)) for text in system_turns]
    if tools:
        parts.append(turn(TOOL_SCHEMAS_ROLE, clean(tool_schemas_json(tools))))
    for index, message in enumerate(rest):
        last = index == len(rest) - 1
        parts.append(
            _render(message, index == current_user, last, call_names, tool_result_format, clean)
        )
    prompt = "".join(parts)
    if not prompt.endswith(GENERATION_PROMPT):
        prompt += GENERATION_PROMPT
    return prompt


def strip_end_of_turn(text: str) -> str:
    """Generated text without the ``<|EOT|>`` that ends it, when decoding kept it."""
    return text[: -len(EOT)] if text.endswith(EOT) else text


# --------------------------------------------------------------------------- helpers


def _system_turns(lead: Sequence[Message], policy: SystemPolicy, default: str | None) -> list[str]:
    texts = [message.content or "" for message in lead]
    if policy is SystemPolicy.REQUEST:
        return texts
    assert default is not None
    if policy is SystemPolicy.DEFAULT_IF_MISSING:
        return texts or [default]
    if policy is SystemPolicy.DEFAULT:
        return [default]
    return ["\n".join([default, *texts])]


def _keep(text: str) -> str:
    return text


def _render(
    message: Message,
    current_user: bool,
    last: bool,
    call_names: dict[str, str],
    result_format: ToolResultFormat,
    clean,
) -> str:
    if isinstance(message, SpokenTurn):
        if current_user:
            return turn("human", message.audio_tokens)  # validated audio tokens: ours
        if message.transcript is None:
            raise ValueError(
                "an earlier spoken user turn has no transcript: only the current user turn "
                "is sent as audio tokens"
            )
        return turn("human", clean(message.transcript))

    role = message.role
    if role == "tool":
        name = call_names.get(message.tool_call_id or "") or message.name or DEFAULT_RESULT_NAME
        return tool_result_turn(clean(message.content or ""), clean(name), result_format)
    calls = message.tool_calls if role == "assistant" else ()
    for call in calls:
        call_names[call.id] = call.name
    name = clean(ROLE_NAMES.get(role, role))
    if message.content is None and not calls and last:
        return open_turn(name)  # upstream: content None is a prefill the model continues
    return turn(name, clean((message.content or "") + render_tool_calls(calls)))
