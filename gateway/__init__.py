"""step-audio-gateway: an OpenAI-compatible API in front of speech engines."""

__version__ = "0.1.0"
