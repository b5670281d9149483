"""Settings from TOML plus environment; the registry's aliases, lazy loading and idle unloading."""

from __future__ import annotations

import gc
import weakref

import pytest

from engines.base import Capability
from engines.catalog import CATALOG, EngineKind
from engines.registry import ModelNotFound, ModelRegistry, ModelSpec, WrongModelKind
from gateway.settings import SettingsError, load_settings


def test_defaults_serve_on_loopback_8000():
    settings = load_settings(environ={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert "tts-1" in settings.models["embedded-tts"].aliases


def test_environment_overrides_any_key():
    settings = load_settings(environ={
        "GATEWAY__SERVER__PORT": "9001",
        "GATEWAY__SERVER__API_KEYS": '["a", "b"]',
        "GATEWAY__ENGINES__IDLE_UNLOAD_SECONDS": "30",
        "GATEWAY__SERVER__LOG_FORMAT": "json",
    })
    assert settings.server.port == 9001
    assert settings.server.api_keys == ["a", "b"]
    assert settings.engines.idle_unload_seconds == 30
    assert settings.server.log_format == "json"


def test_config_file_from_env_and_errors(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text('[server]\nport = 7000\n')
    assert load_settings(environ={"GATEWAY_CONFIG": str(path)}).server.port == 7000
    path.write_text('[server]\nprot = 7000\n')
    with pytest.raises(SettingsError, match="prot"):
        load_settings(path, environ={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


class Counting:
    loads = 0


@pytest.fixture
def registry(tmp_path):
    kind = EngineKind("tests.test_settings_and_registry:CountingEngine", frozenset({Capability.SPEECH}))
    return ModelRegistry(
        [ModelSpec("m", "counting", aliases=("alias-a", "org/alias-b"))],
        cache_dir=tmp_path, catalog={**CATALOG, "counting": kind}, idle_unload_seconds=10,
    )


from engines.base import SpeechEngine  # noqa: E402


class CountingEngine(SpeechEngine):
    def load(self):
        Counting.loads += 1

    def voices(self):
        return []

    async def synthesize(self, request):  # pragma: no cover
        yield


async def test_aliases_resolve_and_unknown_names_fail(registry):
    assert registry.canonical("alias-a") == registry.canonical("org/alias-b") == "m"
    with pytest.raises(ModelNotFound):
        registry.canonical("nope")
    with pytest.raises(WrongModelKind):
        registry.check("m", Capability.TRANSCRIPTION)
    assert {c.id for c in registry.cards()} == {"m", "alias-a", "org/alias-b"}


async def test_models_load_on_demand_and_unload_when_idle(registry):
    before = Counting.loads
    async with registry.use("alias-a", Capability.SPEECH):
        async with registry.use("m", Capability.SPEECH):
            pass
        assert await registry.unload_idle(now=1e12) == []  # in use: never unloaded
    assert Counting.loads == before + 1
    assert await registry.unload_idle() == []  # used just now
    assert await registry.unload_idle(now=1e12) == ["m"]
    async with registry.use("m", Capability.SPEECH):
        pass
    assert Counting.loads == before + 2


class UnloadRecordingEngine(CountingEngine):
    def unload(self):
        self.unloaded = True


async def test_a_model_taken_while_the_reaper_waits_for_its_lock_is_not_unloaded(tmp_path):
    """The reaper finds the model idle, then takes the model's lock, which lets other tasks
    run (anyio's acquire yields); a request that takes the model in that moment keeps it
    loaded, instead of computing on an engine stopped under it."""
    import anyio

    kind = EngineKind(
        "tests.test_settings_and_registry:UnloadRecordingEngine", frozenset({Capability.SPEECH})
    )
    registry = ModelRegistry(
        [ModelSpec("m", "recording")], cache_dir=tmp_path,
        catalog={**CATALOG, "recording": kind}, idle_unload_seconds=10,
    )
    async with registry.speech("m"):
        pass
    unloaded, held = [], []

    async def reaper():
        unloaded.extend(await registry.unload_idle(now=1e12))

    async def request():
        async with registry.speech("m") as engine:
            await anyio.wait_all_tasks_blocked()  # the reaper has done all it will do
            held.append(getattr(engine, "unloaded", False))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(reaper)  # runs first, up to its lock
        tasks.start_soon(request)
    assert held == [False] and unloaded == []
    assert [s.loaded for s in registry.states()] == [True]
    assert await registry.unload_idle(now=1e12) == ["m"]  # idle once the request is over


class _Cycle:
    """A model's objects as Python holds them: reference cycles, freed only by the collector."""

    def __init__(self) -> None:
        self.me = self


class CyclicEngine(CountingEngine):
    alive: "weakref.WeakSet[_Cycle]" = weakref.WeakSet()

    def load(self):
        self.model = _Cycle()
        CyclicEngine.alive.add(self.model)

    def unload(self):
        self.model = None


async def test_preloaded_models_leave_full_collections_and_unloaded_ones_are_collected(tmp_path):
    """A full collection walked every object of every loaded model (about 100,000 objects,
    30 ms of stalled event loop with the embedded models); after the preload they are
    frozen out of its reach, and given back when a model is unloaded."""
    kind = EngineKind("tests.test_settings_and_registry:CyclicEngine", frozenset({Capability.SPEECH}))
    registry = ModelRegistry(
        [ModelSpec("m", "cyclic")], cache_dir=tmp_path, catalog={**CATALOG, "cyclic": kind},
        idle_unload_seconds=10,
    )
    registry.settle_heap = True  # as serve sets it
    try:
        await registry.preload(["m"])
        assert registry.ready
        [model] = list(CyclicEngine.alive)
        assert gc.is_tracked(model) and gc.get_freeze_count() > 0
        assert not any(o is model for o in gc.get_objects())  # out of the collector's walk
        del model
        assert await registry.unload_idle(now=1e12) == ["m"]
        assert not list(CyclicEngine.alive)  # its cycle was collected, not leaked frozen
    finally:
        gc.unfreeze()


def test_duplicate_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        ModelRegistry([ModelSpec("a", "piper", aliases=("x",)), ModelSpec("b", "kokoro", aliases=("x",))], cache_dir=tmp_path)


def test_step_audio_config_extends_the_default_and_takes_over_the_openai_names():
    from engines.registry import registry_from_settings

    settings = load_settings("config/step-audio.toml", environ={"GATEWAY__STEP_AUDIO__VLLM_URLS": '["http://vllm:8001"]'})
    assert settings.step_audio.model_dir == "/models" and settings.step_audio.vllm_urls == ["http://vllm:8001"]
    assert settings.server.port == 8000 and "whisper-base" in settings.models  # inherited
    registry = registry_from_settings(settings)
    assert registry.canonical("gpt-4o-audio-preview") == "step-audio-chat"
    assert registry.canonical("smollm2-135m") == "smollm2-135m"  # still reachable by its own id
    assert registry.canonical("tts-1") == "step-audio-tts-3b"
    assert registry.canonical("kokoro-82m") == "kokoro-82m"  # embedded voices stay reachable
    assert registry.card("step-audio-tokenizer").target == "step-audio-tokenizer"
    default = registry_from_settings(load_settings(environ={}))
    assert default.canonical("gpt-4o-audio-preview") == "smollm2-135m"


def test_extends_loops_are_refused(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(SettingsError, match="loops"):
        load_settings(tmp_path / "a.toml", environ={})


async def test_typed_accessors_hand_out_the_capabilitys_interface(tmp_path):
    """registry.speech() gives a SpeechEngine; a catalog entry that claims a capability
    its engine class does not implement is a model that cannot serve (503), found at
    first use instead of as an AttributeError somewhere in a handler."""
    from engines.base import EngineUnavailable

    liar = EngineKind("tests.test_settings_and_registry:CountingEngine", frozenset({Capability.CHAT}))
    honest = EngineKind("tests.test_settings_and_registry:CountingEngine", frozenset({Capability.SPEECH}))
    registry = ModelRegistry(
        [ModelSpec("speaks", "honest"), ModelSpec("claims-chat", "liar")],
        cache_dir=tmp_path, catalog={**CATALOG, "honest": honest, "liar": liar},
    )
    async with registry.speech("speaks") as engine:
        assert isinstance(engine, SpeechEngine) and engine.voice_aliases() == {}
    with pytest.raises(EngineUnavailable, match="does not provide it") as caught:
        async with registry.chat("claims-chat"):
            pass
    assert caught.value.status_code == 503
    with pytest.raises(WrongModelKind):
        async with registry.transcription("speaks"):
            pass
