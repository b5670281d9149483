"""One assistant turn, whatever door asked for it: chat completions and realtime responses
are two renderings of the same run.

:func:`run_turn` takes a prepared :class:`~engines.chat.ChatRequest` and, for a spoken
answer, the :class:`~gateway.api.chat.voice.SpokenReply` that voices it, and yields typed
events: the engine's ``TextDelta`` and tool-call events as they are made,
:class:`AudioBytes` the moment a sentence's audio is encoded, whatever the spoken reply
adds once it is done (``on_spoken``: chat's stored audio id), and the engine's ``Finish``
last. The chat door renders them as ``chat.completion.chunk`` objects or one
``chat.completion``, the realtime door as its server events.

Everything that stops a turn stops it here, the same way on every door: closing the
iterator (a client that left, a barge-in, ``response.cancel``, a cancelled task) closes
the engine's generator at once, which frees the chat model, and cancels the synthesis.
The key's tokens are charged when the turn finishes; its spoken audio as it is made (by
the reply); a failure (an engine fault, the key running out) is raised to the renderer.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from engines.chat import ChatRequest, Finish, TextDelta, ToolCallStart
from engines.registry import ModelRegistry

from . import metrics
from .api.chat.voice import SpokenReply, interleave
from .policy import Policy


@dataclass(frozen=True)
class AudioBytes:
    """Encoded audio of the spoken answer, in the reply's format."""

    data: bytes


#: Called once a spoken reply has said everything: (the reply, whether the turn called
#: tools); what it returns (if not None) is yielded before the ``Finish``.
OnSpoken = Callable[[SpokenReply, bool], Awaitable[object | None]]


async def run_turn(
    registry: ModelRegistry,
    model: str,
    request: ChatRequest,
    policy: Policy,
    *,
    reply: SpokenReply | None = None,
    on_spoken: OnSpoken | None = None,
    door: str = "chat",
) -> AsyncIterator[object]:
    """The turn's events (see the module notes). The first token and the first audio are
    timed for the metrics on the way out, here rather than in a generator around this
    one: every event of a stream passes through each such layer."""
    token_seen = audio_seen = False
    try:
        async with registry.chat(model) as engine:
            finish: Finish | None = None
            called_tools = False
            if reply is not None:
                reply.start()
            events = engine.generate(request)
            if reply is not None:  # the reply's audio leaves the moment it is encoded
                events = interleave(
                    events,
                    reply,
                    text_of=_text_of,
                    pace=engine.computes_locally and registry.compute_slots == 1,
                )
            async with aclosing(events):  # a hang-up frees the engine at once
                async for event in events:
                    if type(event) is TextDelta and token_seen:  # most events
                        yield event
                        continue
                    if isinstance(event, bytes):
                        if not audio_seen:
                            audio_seen = True
                            metrics.first_audio(door, model)
                        yield AudioBytes(event)
                        continue
                    if isinstance(event, Finish):
                        finish = event
                        continue
                    if not token_seen and isinstance(event, (TextDelta, ToolCallStart)):
                        token_seen = True
                        metrics.first_token(model)
                    if isinstance(event, ToolCallStart):
                        called_tools = True
                    yield event
        if reply is not None:
            reply.close()
            async for data in reply.drain():
                if not audio_seen:
                    audio_seen = True
                    metrics.first_audio(door, model)
                yield AudioBytes(data)
            metrics.count_audio(door, "out", model, reply.seconds)
            if on_spoken is not None and (extra := await on_spoken(reply, called_tools)):
                yield extra
        assert finish is not None, "chat engine ended without a Finish event"
        await policy.charge_tokens(finish.prompt_tokens + finish.completion_tokens)
        yield finish
    finally:
        if reply is not None:
            await reply.aclose()


def _text_of(event: object) -> str | None:
    """What of an engine event a spoken reply says: the text, not tool calls."""
    return event.text if isinstance(event, TextDelta) else None
