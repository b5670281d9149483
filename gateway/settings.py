"""Settings: one TOML file under ``config/``, each key overridable from the environment.

Environment overrides are spelled ``GATEWAY__<SECTION>__<KEY>`` (any depth), so that a
container can change a port or add an API key without shipping a new file. Values are
read as TOML (``9000``, ``true``, ``["a", "b"]``) and fall back to a plain string.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping

import msgspec

from adapters import openai_names
from adapters.limits import SchemaBudget
from adapters.voices import OPENAI_VOICES

ENV_PREFIX = "GATEWAY__"
CONFIG_ENV = "GATEWAY_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.toml"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

#: Engine kinds that must exist once per gateway, not once per worker process: their weights
#: sit in GPU memory (Step-Audio's tokenizer and TTS-3B), and a cloned voice lives in the TTS
#: that registered it.
ONE_COPY_ENGINES = ("step-audio-tokenizer", "step-audio-tts")


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
    # Unread bytes a stream may buffer for a client that reads slower than it is produced;
    # past this the client is taken to have stopped reading and its generation is stopped.
    stream_buffer_bytes: int = 8_388_608
    # Connection timeouts (see gateway/server.py); they never apply while a response is
    # being produced or streamed.
    header_timeout_seconds: float = 10.0
    body_idle_timeout_seconds: float = 10.0
    body_min_bytes_per_second: float = 1024.0
    keep_alive_timeout_seconds: float = 5.0
    # Connections served at once; above it new requests get 503 (0: no cap).
    max_connections: int = 1000
    # Worker processes sharing the listening socket: a number, or "auto" (see
    # gateway/processes.py and config/default.toml).
    workers: int | str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.workers, str) and self.workers.strip().isdigit():
            self.workers = int(self.workers)
        if self.workers != "auto" and (
            isinstance(self.workers, str) or isinstance(self.workers, bool) or self.workers < 1
        ):
            raise ValueError(
                f'server.workers must be a whole number >= 1 or "auto", not {self.workers!r}'
            )
        for key in self.api_keys:
            if key.lower().startswith("sha256:") and not _SHA256_HEX.fullmatch(key[7:].strip()):
                raise ValueError("a 'sha256:' API key must be followed by 64 hex digits")
        for name in (
            "header_timeout_seconds",
            "body_idle_timeout_seconds",
            "keep_alive_timeout_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"server.{name} must be positive")
        if self.body_min_bytes_per_second < 0 or self.max_connections < 0:
            raise ValueError("server.body_min_bytes_per_second and max_connections must be >= 0")


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
    # Turns the current user's input_audio into <audio_N> tokens for chat engines that read
    # speech directly (Step-Audio).
    input_audio_tokenizer: str = "step-audio-tokenizer"
    # Voices replies when a request asks for the audio modality.
    speech_model: str = "tts-1"
    # How long a spoken reply stays resolvable by its audio id.
    audio_ttl_seconds: int = 3600
    # How long a stored /v1/responses response can be read back or continued.
    response_ttl_seconds: int = 86400


class StepAudioSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The GPU deployment. Empty ``model_dir`` leaves the Step-Audio models out."""

    # Folder holding Step-Audio-Tokenizer/, Step-Audio-Chat/ and Step-Audio-TTS-3B/.
    model_dir: str = ""
    # vLLM replicas serving Step-Audio-Chat (tensor-parallel), and its served name.
    vllm_urls: list[str] = msgspec.field(default_factory=lambda: ["http://127.0.0.1:8001"])
    vllm_model: str = "step-audio-chat"
    vllm_api_key: str | None = None
    # Which system prompt Step-Audio-Chat sees: "request" (only the request's, as
    # upstream's stepaudio.py), "default_if_missing" (default_system when the request has
    # none, as the HF/vLLM template), "default" (always default_system) or "combine".
    system_policy: str = "request"
    default_system: str | None = None
    # Role name of tool-result turns: "function_output" (Step-Audio 2's vLLM template).
    tool_result_role: str = "function_output"
    # At start, ask each vLLM replica's /tokenize how it reads <audio_0><audio_5119><|BOT|><|EOT|>
    # and refuse to serve through one that does not read Step-Audio-Chat's ids. Off only to
    # put another model behind the same engine on purpose (the real-vLLM test tier does).
    check_vllm_tokenizer: bool = True
    # The speakers folder of the Step-Audio repository (speakers_info.json and
    # {id}_prompt.wav); default: <model_dir>/speakers.
    speakers_dir: str = ""
    # OpenAI voice names -> Step-Audio speakers (upstream ships one voice, Tingting).
    voices: dict[str, str] = msgspec.field(
        default_factory=lambda: {name: "Tingting" for name in OPENAI_VOICES}
    )
    # Extra engine options (device, max_new_tokens, cpu_threads, ...).
    tokenizer_options: dict[str, Any] = {}
    tts_options: dict[str, Any] = {}
    # The model names OpenAI clients use that move to the Step-Audio models.
    speech_aliases: list[str] = msgspec.field(default_factory=lambda: list(openai_names.SPEECH))
    chat_aliases: list[str] = msgspec.field(default_factory=lambda: list(openai_names.ALL_CHAT))

    @property
    def enabled(self) -> bool:
        return bool(self.model_dir)


class LimitsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Budgets every input is checked against before any compute (a 400 naming the field)."""

    # Audio (transcription uploads, chat input_audio), in seconds of sound: the declared
    # duration is checked before decoding and decoding stops once this is passed.
    max_audio_seconds: float = 1500.0
    # Nesting of a JSON request body (arrays and objects).
    max_json_depth: int = 64
    # Characters in one text field (a chat message's content, a transcription prompt).
    max_text_chars: int = 10_485_760
    # JSON schemas compiled into grammars (tool parameters, response_format): their size
    # as compact JSON (all tools together), nesting, largest count (minItems, maxLength,
    # {m,n}; larger maxima are dropped, larger minima refused) and grammar-size estimate.
    max_schema_bytes: int = 32_768
    max_schema_depth: int = 32
    max_schema_bound: int = 256
    max_grammar_bytes: int = 1_048_576
    # Per-key rate limits by key (plain or "sha256:<hex>"); "*" for every other key.
    per_key: dict[str, KeyLimitSettings] = {}

    def schema_budget(self) -> SchemaBudget:
        return SchemaBudget(
            max_bytes=self.max_schema_bytes,
            max_depth=self.max_schema_depth,
            max_bound=self.max_schema_bound,
            max_grammar_bytes=self.max_grammar_bytes,
        )


class KeyLimitSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One key's limits (see [limits.per_key] in config/default.toml); 0 or absent: none."""

    rpm: int = 0
    tpm: int = 0
    audio_seconds_in_per_minute: float = 0.0
    audio_seconds_out_per_minute: float = 0.0
    concurrent_streams: int = 0
    # Models (or aliases) the key may use; empty: every model.
    models: list[str] = []

    def __post_init__(self) -> None:
        if min(self.rpm, self.tpm, self.concurrent_streams) < 0 or min(
            self.audio_seconds_in_per_minute, self.audio_seconds_out_per_minute
        ) < 0:
            raise ValueError("limits.per_key: limits must be >= 0 (0: no limit)")


class StateSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where replicas keep what they share (limits, audio ids, transcripts, clones)."""

    backend: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "sag"
    redis_timeout_seconds: float = 2.0
    # While Redis cannot be reached: "closed" refuses limited requests (503), "open" serves
    # them unlimited.
    on_redis_error: str = "closed"

    def __post_init__(self) -> None:
        if self.backend not in ("memory", "redis"):
            raise ValueError("state.backend must be 'memory' or 'redis'")
        if self.on_redis_error not in ("closed", "open"):
            raise ValueError("state.on_redis_error must be 'closed' or 'open'")


class RealtimeSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Budgets of one /v1/realtime session (see gateway/api/realtime)."""

    max_event_bytes: int = 8 * 1024 * 1024
    max_buffer_seconds: float = 120.0
    max_items: int = 500
    # A client with more than this many events or bytes waiting for it, or whose socket
    # takes no event for send_timeout_seconds, has stopped reading: it is dropped.
    send_queue_events: int = 512
    send_timeout_seconds: float = 10.0
    send_queue_bytes: int = 16 * 1024 * 1024
    # Open sessions in this process; kept below server.max_connections so plain HTTP
    # requests always find a connection slot.
    max_sessions: int = 100
    # Input audio a session holds: its input buffer and its items' audio together.
    max_audio_seconds_held: float = 600.0
    # Committed audio items awaiting transcription; more are refused, so one session
    # cannot keep the recogniser busy for everyone else.
    max_pending_transcriptions: int = 2

    def __post_init__(self) -> None:
        if min(self.max_sessions, self.max_pending_transcriptions, self.send_queue_bytes) < 1:
            raise ValueError(
                "realtime.max_sessions, max_pending_transcriptions and send_queue_bytes"
                " must be >= 1"
            )


class IceServerSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A STUN or TURN server, as a browser's RTCIceServer names it."""

    urls: list[str]
    username: str = ""
    credential: str = ""


class WebRTCSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """WebRTC calls (POST /v1/realtime/calls): which addresses the gateway's ICE offers
    and accepts (see gateway/api/realtime/webrtc.py)."""

    # Local addresses the gateway binds its call sockets to, each offered as a host
    # candidate. Loopback by default: a browser on this machine reaches it, nothing else.
    host_addresses: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1"])
    # The address offered instead of each host address, for a gateway behind a one-to-one
    # NAT (a cloud VM's public IP); empty: the host addresses themselves.
    announced_address: str = ""
    # Networks (CIDR) the gateway accepts remote candidates and connectivity checks from;
    # no packet is ever sent to an address outside them.
    remote_networks: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8"])
    # STUN/TURN servers for the gateway's own side (relay candidates through TURN).
    ice_servers: list[IceServerSettings] = []
    # A call whose peer has sent no RTP this long (after it began) has vanished: it is
    # hung up and everything it held freed. A browser's microphone track sends a packet
    # every 20 ms, silence included; time the gateway's own event loop was held up does
    # not count against the peer. A peer whose socket has closed (a killed browser: what
    # the gateway sends it is refused) is hung up 0.1 s after its last packet instead.
    # Raise it for callers on lossy networks.
    peer_timeout_seconds: float = 1.0
    # A call whose peer never connects is dropped after this long.
    connect_timeout_seconds: float = 20.0

    def __post_init__(self) -> None:
        import ipaddress

        for network in self.remote_networks:
            ipaddress.ip_network(network, strict=False)  # raises ValueError when not one
        if self.peer_timeout_seconds <= 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("webrtc.peer_timeout_seconds and connect_timeout_seconds must be > 0")


class PlaygroundSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The playground page at ``/`` and the ephemeral keys it talks with (gateway/playground)."""

    # With server.api_keys set, the key (one of them, plain or "sha256:") whose ephemeral
    # secrets POST /playground/session hands the page: its limits and model list hold for
    # the playground's calls. Empty: with keys set, that endpoint mints nothing and the
    # page mints a secret with the key typed into it. Without keys, secrets are minted
    # for the gateway's one anonymous owner.
    session_key: str = ""
    # Who may get a secret from POST /playground/session (CIDR networks of the client's
    # address): loopback only by default. Widen it only where everyone who can reach
    # the gateway may use that key.
    session_networks: list[str] = msgspec.field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"]
    )
    # How long a secret from /playground/session opens calls (seconds).
    session_seconds: int = 600

    def __post_init__(self) -> None:
        import ipaddress

        for network in self.session_networks:
            ipaddress.ip_network(network, strict=False)  # raises ValueError when not one
        if not 10 <= self.session_seconds <= 7200:
            raise ValueError("playground.session_seconds must be between 10 and 7200")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    engines: EngineSettings = msgspec.field(default_factory=EngineSettings)
    chat: ChatSettings = msgspec.field(default_factory=ChatSettings)
    step_audio: StepAudioSettings = msgspec.field(default_factory=StepAudioSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    realtime: RealtimeSettings = msgspec.field(default_factory=RealtimeSettings)
    webrtc: WebRTCSettings = msgspec.field(default_factory=WebRTCSettings)
    playground: PlaygroundSettings = msgspec.field(default_factory=PlaygroundSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    models: dict[str, ModelSettings] = {}
    voices: dict[str, list[str]] = {}

    def __post_init__(self) -> None:
        slots = self.server.max_connections
        if slots and self.realtime.max_sessions >= slots:
            raise ValueError(
                f"realtime.max_sessions ({self.realtime.max_sessions}) must be below"
                f" server.max_connections ({slots}): sessions that took every connection"
                " would leave none for HTTP requests"
            )
        if self.playground.session_key:
            from .auth import KeyRing, _digest_of

            if _digest_of(self.playground.session_key) not in KeyRing(self.server.api_keys).digests:
                raise ValueError("playground.session_key must be one of server.api_keys")
        workers = self.server.workers
        if workers == "auto" or workers == 1:
            return
        if self.state.backend == "memory":
            raise ValueError(
                f"server.workers = {workers} needs a shared state backend: with state.backend ="
                ' "memory" each worker process would keep its own audio ids of spoken replies,'
                " per-key rate limits, transcripts and cloned voices' owners, so a request that"
                ' lands on another worker would lose them. Set [state] backend = "redis" (and'
                ' redis_url), or server.workers = 1 (or "auto")'
            )
        heavy = one_copy_models(self)
        if heavy:
            raise ValueError(
                f"server.workers = {workers} would load {', '.join(heavy)} once per worker process"
                " (a copy of the weights each, on the GPU), and a cloned voice would exist in one"
                ' worker only. Keep server.workers = 1 (or "auto") and scale by running more'
                " gateways behind the load balancer, one per GPU, on one Redis (README, Scaling)"
            )


def one_copy_models(settings: Settings) -> list[str]:
    """The configured models whose engines must not be loaded once per worker process."""
    found = [name for name, model in settings.models.items() if model.engine in ONE_COPY_ENGINES]
    if settings.step_audio.enabled:
        found += ["step-audio-tokenizer", "step-audio-tts-3b"]
    return found


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


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a TOML file; ``extends = "other.toml"`` (relative to it) is read first, then
    this file's keys override it, so a deployment file only says what differs."""
    path = path.resolve()
    if path in seen:
        raise SettingsError(f"{path}: 'extends' loops back to itself")
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from exc
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    return _merge(_read_tree(path.parent / str(parent), (*seen, path)), tree)


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read settings from ``path`` (or $GATEWAY_CONFIG, or config/default.toml) plus env."""
    environ = os.environ if environ is None else environ
    config_path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    tree = _read_tree(config_path)
    _apply_env(tree, environ)
    try:
        return msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{config_path}: {exc}") from exc
