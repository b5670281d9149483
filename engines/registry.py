"""Models by name: aliases, loading on demand, unloading when idle.

A model is loaded the first time a request needs it (or at start, when preloaded) and is
kept while requests use it. With ``idle_unload_seconds`` set, a model nobody has used for
that long is unloaded by a reaper task, and loads again on the next request.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping

import anyio
import structlog

from . import heap
from .base import (
    AudioTokenizer,
    Capability,
    Engine,
    EngineContext,
    EngineError,
    EngineUnavailable,
    SpeechEngine,
    TranscriptionEngine,
)
from .capabilities import INTERFACES
from .catalog import CATALOG, EngineKind
from .chat import ChatEngine
from .compute import LeastServedFirst
from .workers import Worker

log = structlog.get_logger(__name__)


class ModelNotFound(EngineError):
    status_code = 404
    code = "model_not_found"


class WrongModelKind(EngineError):
    status_code = 400
    code = "model_not_supported"


@dataclass(frozen=True)
class ModelSpec:
    id: str
    kind: str
    owned_by: str = "step-audio-gateway"
    aliases: tuple[str, ...] = ()
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass
class _Slot:
    spec: ModelSpec
    kind: EngineKind
    created: int
    engine: Engine | None = None
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    load_seconds: float | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)


@dataclass(frozen=True)
class ModelCard:
    """What /v1/models shows for one id (an alias shows as a model of its own)."""

    id: str
    owned_by: str
    created: int
    capabilities: frozenset[Capability]
    target: str
    loaded: bool


@dataclass(frozen=True)
class ModelState:
    """One model's load and queue state at a glance (what an operator graphs)."""

    id: str
    loaded: bool
    in_use: int  # requests holding the model
    running: int  # inference calls computing on its worker
    waiting: int  # inference calls queued on its worker
    load_seconds: float | None  # how long its last load took


class ModelRegistry:
    def __init__(
        self,
        specs: list[ModelSpec],
        *,
        cache_dir,
        voices: Mapping[str, list[str]] | None = None,
        max_concurrency: int = 1,
        max_queue: int = 16,
        idle_unload_seconds: float = 0.0,
        parallel_inference: int = 1,
        catalog: Mapping[str, EngineKind] = CATALOG,
    ) -> None:
        self._cache_dir = cache_dir
        self._voices = dict(voices or {})
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self.idle_unload_seconds = idle_unload_seconds
        self._parallel_inference = max(1, parallel_inference)
        # What every in-process engine's calls take turns on (engines.workers).
        self._compute = LeastServedFirst(self._parallel_inference)
        created = int(time.time())
        self._slots: dict[str, _Slot] = {}
        self._names: dict[str, str] = {}
        for spec in specs:
            if spec.kind not in catalog:
                raise ValueError(f"model {spec.id!r}: unknown engine kind {spec.kind!r}")
            self._slots[spec.id] = _Slot(spec, catalog[spec.kind], created)
            for name in (spec.id, *spec.aliases):
                if name in self._names:
                    raise ValueError(f"model name {name!r} is defined twice")
                self._names[name] = spec.id
        self.ready = False
        self.load_error: str | None = None
        #: Freeze the heap after the preload (engines.heap): for a serving process, which
        #: owns its interpreter; an app embedded in another process (the tests') does not.
        self.settle_heap = False
        #: Called once, in the event loop, the moment the preload has succeeded.
        self.ready_callbacks: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ lookup

    @property
    def compute_slots(self) -> int:
        """How many in-process engines may compute at once (``parallel_inference``)."""
        return self._parallel_inference

    def canonical(self, name: str) -> str:
        try:
            return self._names[name]
        except KeyError:
            configured = ", ".join(sorted(self._names))
            raise ModelNotFound(
                f"The model '{name}' does not exist. Configured models: {configured}.",
                param="model",
            ) from None

    def cards(self) -> list[ModelCard]:
        cards = []
        for name, model_id in self._names.items():
            slot = self._slots[model_id]
            cards.append(
                ModelCard(
                    id=name,
                    owned_by=slot.spec.owned_by,
                    created=slot.created,
                    capabilities=slot.kind.capabilities,
                    target=model_id,
                    loaded=slot.engine is not None,
                )
            )
        return cards

    def states(self) -> list[ModelState]:
        states = []
        for model_id, slot in self._slots.items():
            worker = slot.engine.worker if slot.engine is not None else None
            states.append(
                ModelState(
                    id=model_id,
                    loaded=slot.engine is not None,
                    in_use=slot.in_use,
                    running=worker.busy if worker else 0,
                    waiting=worker.waiting if worker else 0,
                    load_seconds=slot.load_seconds,
                )
            )
        return states

    def card(self, name: str) -> ModelCard:
        self.canonical(name)
        return next(card for card in self.cards() if card.id == name)

    def check(self, name: str, capability: Capability) -> str:
        """Resolve ``name`` and make sure it can serve ``capability``; no loading."""
        model_id = self.canonical(name)
        if capability not in self._slots[model_id].kind.capabilities:
            raise WrongModelKind(
                f"The model '{name}' does not support {capability.value}.", param="model"
            )
        return model_id

    # ------------------------------------------------------------------ use

    def chat(self, name: str) -> AbstractAsyncContextManager[ChatEngine]:
        """Hold the chat engine behind ``name`` loaded for the duration of the block."""
        return self.use(name, Capability.CHAT)  # type: ignore[return-value]

    def speech(self, name: str) -> AbstractAsyncContextManager[SpeechEngine]:
        return self.use(name, Capability.SPEECH)  # type: ignore[return-value]

    def transcription(self, name: str) -> AbstractAsyncContextManager[TranscriptionEngine]:
        return self.use(name, Capability.TRANSCRIPTION)  # type: ignore[return-value]

    def translation(self, name: str) -> AbstractAsyncContextManager[TranscriptionEngine]:
        return self.use(name, Capability.TRANSLATION)  # type: ignore[return-value]

    def audio_tokens(self, name: str) -> AbstractAsyncContextManager[AudioTokenizer]:
        return self.use(name, Capability.AUDIO_TOKENS)  # type: ignore[return-value]

    @asynccontextmanager
    async def use(self, name: str, capability: Capability) -> AsyncIterator[Engine]:
        """Hold the engine behind ``name`` loaded for the duration of the block; it
        implements ``capability``'s interface (checked when it was loaded)."""
        slot = self._slots[self.check(name, capability)]
        slot.in_use += 1
        try:
            yield await self._ensure_loaded(slot)
        finally:
            slot.in_use -= 1
            slot.last_used = time.monotonic()

    async def _ensure_loaded(self, slot: _Slot) -> Engine:
        if slot.engine is not None:
            return slot.engine
        async with slot.lock:
            if slot.engine is None:
                engine_class = slot.kind.load_class()
                context = EngineContext(
                    worker=Worker(
                        slot.spec.id,
                        self._max_concurrency,
                        self._max_queue,
                        self._compute,
                    ),
                    cache_dir=self._cache_dir,
                    registry=self,
                    voices=self._voices,
                )
                started = time.perf_counter()
                try:
                    engine = engine_class(slot.spec.id, context, **dict(slot.spec.options))
                    _check_interfaces(engine, slot.kind)
                    await engine.start()
                except EngineError:
                    raise
                except Exception as exc:  # a broken install must answer 503, not crash
                    log.exception("model_load_failed", model=slot.spec.id)
                    raise EngineUnavailable(
                        f"The model '{slot.spec.id}' could not be loaded: {exc}"
                    ) from exc
                slot.load_seconds = time.perf_counter() - started
                log.info("model_loaded", model=slot.spec.id, seconds=round(slot.load_seconds, 3))
                slot.engine = engine
        return slot.engine  # type: ignore[return-value]

    async def preload(self, names: list[str]) -> None:
        """Load ``names`` now; on failure keep serving (lazily) but report it in /ready."""
        try:
            for name in names:
                await self._ensure_loaded(self._slots[self.canonical(name)])
        except Exception as exc:  # noqa: BLE001 - reported by /ready, logged here
            self.load_error = str(getattr(exc, "message", exc))
            log.error("preload_failed", error=self.load_error)
            return
        if self.settle_heap:
            heap.settle()  # the preloaded models leave the collector's full passes
        for callback in self.ready_callbacks:  # before the flag: nothing sees one without the other
            callback()
        self.ready = True

    async def unload_idle(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        unloaded = []
        for slot in self._slots.values():
            if not self._unloadable(slot, now):
                continue
            async with slot.lock:
                # Taking the lock can let other tasks run (anyio's acquire yields), and a
                # request takes a loaded model without the lock: it may hold this one now.
                if not self._unloadable(slot, now):
                    continue
                engine, slot.engine = slot.engine, None
                await engine.stop()  # type: ignore[union-attr]
                unloaded.append(slot.spec.id)
                log.info(
                    "model_unloaded", model=slot.spec.id, idle_seconds=round(now - slot.last_used)
                )
        if unloaded and self.settle_heap:
            heap.release()  # their objects may now be collected
        return unloaded

    def _unloadable(self, slot: _Slot, now: float) -> bool:
        """Loaded, held by no request, and unused for ``idle_unload_seconds``."""
        return (
            slot.engine is not None
            and not slot.in_use
            and now - slot.last_used >= self.idle_unload_seconds
        )

    async def reap_forever(self) -> None:
        if self.idle_unload_seconds <= 0:
            return
        while True:
            await anyio.sleep(max(1.0, self.idle_unload_seconds / 4))
            await self.unload_idle()

    async def close(self) -> None:
        for slot in self._slots.values():
            engine, slot.engine = slot.engine, None
            if engine is not None:
                await engine.stop()


def _check_interfaces(engine: Engine, kind: EngineKind) -> None:
    """Once, before loading: the engine implements the interface of every capability its
    kind is listed for, so a typed accessor never hands out the wrong thing."""
    for capability in kind.capabilities:
        if not isinstance(engine, INTERFACES[capability]):
            raise EngineUnavailable(
                f"The model '{engine.name}' is listed for {capability.value}, but its engine"
                f" ({type(engine).__name__}) does not provide it."
            )


def registry_from_settings(settings) -> ModelRegistry:
    specs = [
        ModelSpec(
            id=model_id,
            kind=model.engine,
            owned_by=model.owned_by,
            aliases=tuple(model.aliases),
            options=model.options,
        )
        for model_id, model in settings.models.items()
    ]
    if settings.step_audio.enabled:
        specs = _with_step_audio(specs, settings.step_audio)
    return ModelRegistry(
        specs,
        cache_dir=settings.engines.cache_path,
        voices=settings.voices,
        max_concurrency=settings.engines.max_concurrency,
        max_queue=settings.engines.max_queue,
        idle_unload_seconds=settings.engines.idle_unload_seconds,
        parallel_inference=settings.engines.parallel_inference,
    )


def _with_step_audio(specs: list[ModelSpec], step_audio) -> list[ModelSpec]:
    """Add the Step-Audio models; the OpenAI names they claim move over from the embedded
    ones, so code written for OpenAI reaches Step-Audio unchanged."""
    root = Path(step_audio.model_dir).expanduser()
    tokenizer = ModelSpec(
        id="step-audio-tokenizer",
        kind="step-audio-tokenizer",
        owned_by="stepfun-ai",
        options={"model_dir": str(root / "Step-Audio-Tokenizer"), **step_audio.tokenizer_options},
    )
    tts = ModelSpec(
        id="step-audio-tts-3b",
        kind="step-audio-tts",
        owned_by="stepfun-ai",
        aliases=tuple(step_audio.speech_aliases),
        options={
            "model_path": str(root / "Step-Audio-TTS-3B"),
            "speakers_dir": step_audio.speakers_dir or str(root / "speakers"),
            "tokenizer_model": tokenizer.id,
            "aliases": dict(step_audio.voices),
            **step_audio.tts_options,
        },
    )
    chat = ModelSpec(
        id="step-audio-chat",
        kind="step-audio-chat",
        owned_by="stepfun-ai",
        aliases=tuple(step_audio.chat_aliases),
        options={
            "vllm_urls": list(step_audio.vllm_urls),
            "vllm_model": step_audio.vllm_model,
            "api_key": step_audio.vllm_api_key,
            "system_policy": step_audio.system_policy,
            "default_system": step_audio.default_system,
            "tool_result_role": step_audio.tool_result_role,
            "check_tokenizer": step_audio.check_vllm_tokenizer,
        },
    )
    added = [tokenizer, tts, chat]
    claimed = {name for spec in added for name in (spec.id, *spec.aliases)}
    kept = [
        ModelSpec(
            id=spec.id,
            kind=spec.kind,
            owned_by=spec.owned_by,
            aliases=tuple(a for a in spec.aliases if a not in claimed),
            options=spec.options,
        )
        for spec in specs
        if spec.id not in claimed
    ]
    return [*kept, *added]
