"""Pure translation between the gateway's plain types and the Step-Audio formats.

No I/O, no torch, no HTTP: strings and numbers in, strings and numbers out, so every
format detail is pinned by golden tests taken from upstream's code (stepfun-ai/Step-Audio).

* :mod:`.special_tokens`: ``<|BOT|>`` / ``<|EOT|>`` turn framing and their ids.
* :mod:`.prompt`: the Step-Audio-Chat prompt from chat messages (system policy, history).
* :mod:`.audio_tokens`: tokenizer codes as ``<audio_N>`` text and back.
* :mod:`.tools`: tool schemas, calls and results in the prompt; a streaming call parser.
* :mod:`.speech_controls`: OpenAI ``voice`` / ``instructions`` / ``speed`` as TTS-3B tags.
"""
