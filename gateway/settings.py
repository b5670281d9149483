"""Settings: one TOML file under ``config/``, each key overridable from the environment.

Environment overrides are spelled ``GATEWAY__<SECTION>__<KEY>`` (any depth), so that a
container can change a port or add an API key without shipping a new file. Values are
read as TOML (``9000``, ``true``, ``["a", "b"]``) and fall back to a plain string.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

import msgspec

ENV_PREFIX = "GATEWAY__"
CONFIG_ENV = "GATEWAY_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.toml"


class ServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = []
    log_format: str = "auto"
    log_level: str = "info"
    max_upload_bytes: int = 26_214_400
    max_request_bytes: int = 41_943_040
    cors_allow_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])
    sse_keepalive_seconds: float = 10.0


class EngineSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    preload: list[str] = []
    idle_unload_seconds: float = 0.0
    max_concurrency: int = 1
    max_queue: int = 16
    parallel_inference: int = 1
    cache_dir: str = "~/.cache/step-audio-gateway"

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


class ModelSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    engine: str
    owned_by: str = "step-audio-gateway"
    aliases: list[str] = []
    options: dict[str, Any] = {}


class ChatSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Turns input_audio into text for chat engines that take text (the embedded ones).
    input_audio_model: str = "whisper-1"
    # Voices replies when a request asks for the audio modality.
    speech_model: str = "tts-1"
    # How long a spoken reply stays resolvable by its audio id.
    audio_ttl_seconds: int = 3600


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    engines: EngineSettings = msgspec.field(default_factory=EngineSettings)
    chat: ChatSettings = msgspec.field(default_factory=ChatSettings)
    models: dict[str, ModelSettings] = {}
    voices: dict[str, list[str]] = {}


class SettingsError(ValueError):
    """The configuration file or an override does not describe valid settings."""


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part]
        if not path:
            continue
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise SettingsError(f"{name}: {key!r} is not a section")
        node[path[-1]] = _parse_env_value(raw)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from ``path`` (or $GATEWAY_CONFIG, or config/default.toml) plus env."""
    environ = os.environ if environ is None else environ
    config_path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        tree = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {config_path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{config_path}: {exc}") from exc
    _apply_env(tree, environ)
    try:
        return msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{config_path}: {exc}") from exc
