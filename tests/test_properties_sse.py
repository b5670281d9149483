"""Properties of the SSE writer (gateway/sse.py), checked with the parsers clients really use.

Every event the gateway writes must come back out of the openai SDK's own SSE decoder,
httpx-sse, and a line-by-line reader over httpx's ``iter_lines`` as the same JSON, however the bytes are cut into
network reads and wherever keep-alive pings fall; a failing source must end the stream with
one error event in the OpenAI envelope.
"""

from __future__ import annotations

import asyncio
import json

import httpx
from httpx_sse import EventSource
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from engines.base import EngineError
from gateway import sse
from tests.cuts import cut

# JSON values as the gateway's wire structs produce them: any text (newlines, CR, U+2028,
# lone "data:" prefixes...), finite numbers, nesting.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from(["\n", "\r\n", "\r", "data: x\n\n", ": ping", "\u2028", "[DONE]"])
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def _openai_events(chunks: list[bytes]) -> list[str]:
    return [e.data for e in SSEDecoder().iter_bytes(iter(chunks))]


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self):
        yield from self.chunks


def _response(chunks: list[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": sse.MEDIA_TYPE}, stream=_Chunks(chunks))


def _httpx_sse_events(chunks: list[bytes]) -> list[str]:
    return [e.data for e in EventSource(_response(chunks)).iter_sse()]


def _line_reader_events(chunks: list[bytes]) -> list[str]:
    """The hand-written client: httpx's iter_lines, keep what follows ``data: ``. httpx
    splits lines where str.splitlines does (U+2028 too), as httpx-sse before 0.4.2 did."""
    return [
        line[len("data: ") :] for line in _response(chunks).iter_lines() if line.startswith("data: ")
    ]


@given(
    events=st.lists(payloads, max_size=6),
    pings=st.lists(st.integers(min_value=0, max_value=6), max_size=4),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    done=st.booleans(),
)
@settings(max_examples=300, deadline=None)
# httpx's iter_lines splits where str.splitlines does: a raw U+2028 in a string cut the event.
@example(events=[{"": "\u2028"}], pings=[], cuts=[], done=False)
@example(events=[{"a": "x\x85y\u2029"}], pings=[0], cuts=[3, 9], done=True)
def test_every_event_parses_back_to_the_same_json(events, pings, cuts, done):
    frames = [sse.event(payload) for payload in events]
    for position in sorted(pings, reverse=True):
        frames.insert(min(position, len(frames)), sse.PING)
    if done:
        frames.append(sse.DONE)
    stream = b"".join(frames)
    expected = [json.loads(json.dumps(p)) for p in events]

    chunks = [piece for piece in cut(stream, cuts) if piece]
    for parsed in (_openai_events(chunks), _httpx_sse_events(chunks), _line_reader_events(chunks)):
        data = parsed[:-1] if done else parsed
        assert [json.loads(d) for d in data] == expected
        if done:
            assert parsed[-1] == "[DONE]"


@given(payload=payloads)
def test_an_event_is_one_data_line(payload):
    """One ``data:`` line per event: SDKs that join multi-line data with ``\\n`` would still
    parse, but a proxy or a hand-written client reading line by line would not."""
    frame = sse.event(payload)
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert b"\n" not in frame[:-2] and b"\r" not in frame


class _Request:
    """to_api_error only reads the request for Litestar HTTP exceptions; none occur here."""


async def _collect(source) -> list[bytes]:
    body = sse.frames(source, _Request(), done=True)
    return [chunk async for chunk in body]


@given(
    events=st.lists(payloads, max_size=5),
    fail_after=st.none() | st.integers(min_value=0, max_value=5),
    message=st.text(),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
@settings(max_examples=150, deadline=None)
def test_a_failing_source_ends_in_one_error_event(events, fail_after, message, cuts):
    """Encoded and guarded as sse_response chains them: every event before the failure
    arrives intact, then exactly one parsable ``{"error": {...}}`` event in place of
    ``[DONE]``, carrying the engine's message whatever characters it holds."""

    async def source():
        for index, payload in enumerate(events):
            if index == fail_after:
                raise EngineError(message)
            yield payload
        if fail_after is not None:
            raise EngineError(message)

    stream = b"".join(asyncio.run(_collect(source())))
    chunks = [piece for piece in cut(stream, cuts) if piece]
    sent = len(events) if fail_after is None else min(fail_after, len(events))
    for parsed in (_openai_events(chunks), _httpx_sse_events(chunks), _line_reader_events(chunks)):
        assert len(parsed) == sent + 1
        assert [json.loads(d) for d in parsed[:sent]] == [json.loads(json.dumps(p)) for p in events[:sent]]
        if fail_after is None:
            assert parsed[-1] == "[DONE]"
        else:
            error = json.loads(parsed[-1])["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["message"] == message


@given(st.text() | st.sampled_from(["\u2028", '"', "\\", "\x00", "</tool_call>"]))
def test_a_spliced_text_chunk_is_the_bytes_of_the_chunk_struct(text):
    """Chat streams splice each text delta into pre-encoded bytes rather than building
    two structs per token (gateway/api/chat/serving.py): those bytes must be exactly what
    the wire structs encode to, for any text."""
    import msgspec

    from gateway.api.chat.protocol import ChunkChoice, Delta
    from gateway.api.chat.serving import _CONTENT_CLOSE, _CONTENT_OPEN

    encode = msgspec.json.encode
    assert _CONTENT_OPEN + encode(text) + _CONTENT_CLOSE == encode(ChunkChoice(delta=Delta(content=text)))
