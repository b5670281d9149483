"""ONNX Runtime sessions for the embedded voices, opened so they give the cores back.

ONNX Runtime's thread pool keeps its threads spinning for a while after a run returns,
waiting for the next parallel section. A voice runs once per sentence and the gateway
encodes that sentence right after: on a 2-core host the spinning threads held the cores
the encoder needed, and the first 0.15 s of a sentence took 8-12 ms to encode to MP3 or
Opus instead of 2.5 ms (bench/speech_first_byte.py --voices joe, mp3/opus). Stopping the
spin when a run ends keeps the spin inside the run, where it speeds synthesis up (turning
spinning off altogether made Piper's synthesis about 10 % slower).
"""

from __future__ import annotations

from pathlib import Path


def cpu_session(model: Path | str, *, threads: int | None = None):
    """A CPU session on ``model`` whose pool stops spinning once each run returns."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
