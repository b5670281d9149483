"""Pure translation between the gateway's plain types and the Step-Audio formats.

No I/O, no torch, no HTTP: strings and numbers in, strings and numbers out, so every
format detail is pinned by golden tests taken from the reference
(``shared/reference/step-audio-pipeline.md``).

* :mod:`.special_tokens`: ``<|BOT|>`` / ``<|EOT|>`` turn framing and their ids.
* :mod:`.prompt`: the Step-Audio-Chat prompt from chat messages (system policy, history).
* :mod:`.audio_tokens`: tokenizer codes as ``<audio_N>`` text and back.
* :mod:`.tools`: tool schemas, calls and results in the prompt; a streaming call parser.
* :mod:`.speech_controls`: OpenAI ``voice`` / ``instructions`` / ``speed`` as TTS-3B tags.
"""

from .audio_tokens import audio_token_string, split_audio_tokens, validate_codes
from .prompt import SpokenTurn, SystemPolicy, build_prompt, strip_end_of_turn
from .special_tokens import STOP_STRINGS
from .speech_controls import SpeechControls, speech_controls
from .tools import (
    FUNCTION_OUTPUT,
    INPUT,
    ToolCallParser,
    ToolResultFormat,
    parse_tool_calls,
    strip_tool_markup,
)

__all__ = [
    "FUNCTION_OUTPUT",
    "INPUT",
    "STOP_STRINGS",
    "SpeechControls",
    "SpokenTurn",
    "SystemPolicy",
    "ToolCallParser",
    "ToolResultFormat",
    "audio_token_string",
    "build_prompt",
    "parse_tool_calls",
    "speech_controls",
    "split_audio_tokens",
    "strip_end_of_turn",
    "strip_tool_markup",
    "validate_codes",
]
