"""Step-Audio-Chat (130B) behind vLLM, as a chat engine.

The prompt is rendered by :mod:`adapters.step_audio.prompt` and completed through vLLM's
``/v1/completions`` (:mod:`.vllm`); the streamed text goes through the incremental
``<tool_call>`` parser, so tool markup becomes tool-call events and never reaches the
text (or the speech made from it).

Choices the reference leaves open, made here:

* Sampling: what the request gives is sent unchanged (an explicit ``temperature: 1.0``
  is 1.0); what it leaves out gets upstream's values (``stepaudio.py``: temperature 0.7,
  top_p 0.9, 2048 new tokens; HF ``generate``'s top_k 50, which vLLM would otherwise
  leave off).
* Stops: token ids 3 (``<|EOT|>``) and 4 (``<|BOT|>``): vLLM skips special tokens in the
  text it matches stop strings against, so only ids stop on them. The strings stay as
  well (harmless), plus the request's own.
* At start every replica's ``/tokenize`` must read ``<audio_0><audio_5119><|BOT|><|EOT|>``
  as 65536, 70655, 4, 3: a different model or a tokenizer without the audio tokens would
  read each ``<audio_N>`` as a dozen characters and answer nonsense. Otherwise the model
  is unavailable (503 naming the mismatch) rather than serving.
* A named ``tool_choice`` is honoured by opening the assistant turn with
  ``<tool_call>function\\n{name}\\n`` and constraining the arguments to the tool's schema
  with vLLM's guided decoding: the model cannot answer otherwise. ``required`` with one
  tool is the same; with several it opens ``<tool_call>function\\n`` and lets the model
  name one. ``json_object``/``json_schema`` response formats use guided decoding too.
* Log probabilities are not relayed yet (the pool streams text only): asking for them is
  a 400 rather than a silently missing field.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator

from adapters.step_audio.prompt import (
    SpokenTurn,
    SystemPolicy,
    build_prompt,
    strip_end_of_turn,
)
from adapters.step_audio.special_tokens import (
    STOP_STRINGS,
    STOP_TOKEN_IDS,
    TOKENIZER_PROBE,
    TOKENIZER_PROBE_IDS,
)
from adapters.step_audio.tools import FUNCTION_OUTPUT, MarkupToolCallParser, ToolResultFormat

from ..base import EngineError, EngineUnavailable, InvalidInput
from ..chat import (
    ChatEngine,
    ChatEvent,
    ChatRequest,
    Finish,
    TextDelta,
    ToolCallEnd,
    ToolCallStart,
)
from .vllm import VLLMReplicaPool

DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_MAX_TOKENS = 2048
DEFAULT_TOP_K = 50
_CALL_OPEN = "<tool_call>function\n"


def _spoken(message):
    """A user turn carrying audio tokens is a SpokenTurn for the prompt builder (sent as
    audio while it is the current turn, as its transcript once it is history)."""
    if message.audio_tokens:
        return SpokenTurn(message.audio_tokens, transcript=message.content)
    return message


class StepAudioChatEngine(ChatEngine):
    accepts_audio_tokens = True
    computes_locally = False  # vLLM generates; this process only relays

    def __init__(
        self,
        name,
        context,
        *,
        vllm_urls: list[str],
        vllm_model: str = "step-audio-chat",
        api_key: str | None = None,
        system_policy: str = SystemPolicy.REQUEST.value,
        default_system: str | None = None,
        tool_result_role: str = FUNCTION_OUTPUT.role,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        health_interval: float = 5.0,
        check_tokenizer: bool = True,
        read_timeout: float = 600.0,
    ) -> None:
        super().__init__(name, context)
        self.urls = list(vllm_urls)
        self.vllm_model = vllm_model
        self.api_key = api_key
        self.system_policy = SystemPolicy(system_policy)
        self.default_system = default_system
        self.tool_result_format = ToolResultFormat(role=tool_result_role)
        self.max_tokens = max_tokens
        self.health_interval = health_interval
        self.check_tokenizer = check_tokenizer
        # Seconds a replica may send nothing (before its first byte or mid-stream) before
        # the request fails over, or, once the answer has started, ends with an error.
        self.read_timeout = read_timeout
        self.pool: VLLMReplicaPool | None = None

    def load(self) -> None:  # nothing in-process: vLLM holds the model
        pass

    async def start(self) -> None:
        self.pool = VLLMReplicaPool(
            self.urls,
            model=self.vllm_model,
            api_key=self.api_key,
            health_interval=self.health_interval,
            read_timeout=self.read_timeout,
            tokenizer_check=(
                (TOKENIZER_PROBE, TOKENIZER_PROBE_IDS) if self.check_tokenizer else None
            ),
        )
        await self.pool.start()
        mismatches = self.pool.snapshot().mismatches
        if mismatches:
            await self.stop()
            raise EngineUnavailable(
                f"The model '{self.name}' is unavailable: the vLLM behind it does not read "
                f"audio tokens as Step-Audio-Chat does ({'; '.join(mismatches)})."
            )

    async def stop(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.aclose()

    async def count_tokens(self, text: str) -> int:
        # The tokenizer lives with the model in vLLM, not in this process: it counts.
        return await self._started().count_tokens(text)

    def _started(self) -> VLLMReplicaPool:
        if self.pool is None:
            raise EngineError(f"model {self.name!r} is not started")
        return self.pool

    # ------------------------------------------------------------------ request → prompt

    def _prompt(self, request: ChatRequest) -> tuple[str, str | None, dict]:
        """The prompt, the forced tool name (if any) and vLLM extras for the request."""
        if request.logprobs:
            raise InvalidInput(
                f"The model '{self.name}' does not return log probabilities.", param="logprobs"
            )
        mode = request.tool_choice.mode
        tools = [] if mode == "none" else request.tools
        try:
            prompt = build_prompt(
                [_spoken(message) for message in request.messages],
                tools=tools,
                system_policy=self.system_policy,
                default_system=self.default_system,
                tool_result_format=self.tool_result_format,
            )
        except ValueError as exc:
            raise InvalidInput(str(exc), param="messages") from exc
        extra: dict = {"stop_token_ids": list(STOP_TOKEN_IDS), "top_k": DEFAULT_TOP_K}
        forced: str | None = None
        if mode == "function":
            forced = request.tool_choice.name
        elif mode == "required" and len(tools) == 1:
            forced = tools[0].name
        if forced is not None:
            spec = next(t for t in tools if t.name == forced)
            prompt += f"{_CALL_OPEN}{forced}\n"
            extra["guided_json"] = spec.parameters
        elif mode == "required":
            prompt += _CALL_OPEN
        elif request.response_format.type == "json_schema":
            extra["guided_json"] = request.response_format.schema
        elif request.response_format.type == "json_object":
            extra["guided_json"] = {"type": "object"}
        return prompt, forced, extra

    # ------------------------------------------------------------------ generation

    async def generate(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        pool = self._started()
        prompt, forced, extra = self._prompt(request)
        names = {t.name for t in request.tools}
        parser = MarkupToolCallParser(tool_names=names)
        pending = ""
        if forced is not None:
            pending = f"{_CALL_OPEN}{forced}\n"
        elif request.tool_choice.mode == "required" and request.tools:
            pending = _CALL_OPEN
        calls = 0
        finish_reason, prompt_tokens, completion_tokens = "stop", 0, 0
        stops = [*STOP_STRINGS, *request.stop]
        if forced is not None:
            stops.append("</tool_call>")
        pieces = pool.stream_completion(
            prompt,
            max_tokens=request.max_tokens or self.max_tokens,
            temperature=(
                DEFAULT_TEMPERATURE
                if "temperature" in request.defaulted
                else request.temperature
            ),
            top_p=DEFAULT_TOP_P if "top_p" in request.defaulted else request.top_p,
            stop=stops,
            seed=request.seed,
            extra=extra,
            stream=request.incremental,
        )
        async with aclosing(pieces):
            async for piece in pieces:
                text = pending + piece.text if pending else piece.text
                pending = ""
                if "<" not in text and parser.idle:
                    # Most pieces: plain text, which can hold neither tool markup nor the
                    # end-of-turn marker (all begin with "<"), so no parsing is needed.
                    if text:
                        yield TextDelta(text)
                else:
                    for event in self._events(parser.feed(text)):
                        calls += isinstance(event, ToolCallStart)
                        yield event
                if piece.finish_reason is not None:
                    finish_reason = piece.finish_reason
                    prompt_tokens = piece.prompt_tokens or 0
                    completion_tokens = piece.completion_tokens or 0
        if not prompt_tokens:  # a server that reports no usage: its tokenizer counts,
            # with the BOS a completion's prompt gets, as vLLM's own usage would
            prompt_tokens = await pool.count_tokens(prompt, add_special_tokens=True)
        tail = parser.feed("</tool_call>") if forced is not None else []
        for event in self._events([*tail, *parser.close()]):
            calls += isinstance(event, ToolCallStart)
            yield event
        if calls:
            finish_reason = "tool_calls" if finish_reason != "length" else "length"
        elif finish_reason not in ("stop", "length"):
            finish_reason = "stop"
        yield Finish(finish_reason, prompt_tokens, completion_tokens)

    @staticmethod
    def _events(parsed) -> list[ChatEvent]:
        """The parser's events as the engine's: the same types, with the end-of-turn
        marker cut from text and a malformed call turned into an error."""
        out: list[ChatEvent] = []
        for event in parsed:
            if isinstance(event, TextDelta):
                text = strip_end_of_turn(event.text)
                if text:  # unchanged (the usual case): the same event, no new frozen one
                    out.append(event if text is event.text else TextDelta(text))
            elif isinstance(event, ToolCallEnd) and event.error:
                raise EngineError(f"the model wrote a malformed tool call: {event.error}")
            else:
                out.append(event)
        return out
