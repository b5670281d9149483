"""Properties of multipart form folding (gateway/multipart.py), against the SDK's encoder.

The openai SDK turns a transcription request into form items with its own query-string
encoder (``array_format="brackets"``): lists become repeated ``name[]`` keys, objects
``name[key]`` paths, booleans and numbers strings. Whatever values a user passes, folding
those items and converting them with the form's struct must give back what they passed.
"""

from __future__ import annotations

import json

import msgspec
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai._qs import Querystring

from gateway.api.transcription.protocol import TranscriptionForm
from gateway.multipart import fold_form

LIST_FIELDS = ("timestamp_granularities", "include", "known_speaker_names", "languages")

_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


def sdk_items(params: dict) -> list[tuple[str, str]]:
    """The form items the openai SDK sends for ``params`` (its own encoder)."""
    return Querystring().stringify_items(params, array_format="brackets")


@st.composite
def transcription_params(draw):
    params = {"model": draw(_text.filter(bool))}
    for key in ("language", "prompt"):
        if draw(st.booleans()):
            params[key] = draw(_text)
    if draw(st.booleans()):
        params["temperature"] = draw(st.floats(min_value=0, max_value=1))
    if draw(st.booleans()):
        params["stream"] = draw(st.booleans())
    if draw(st.booleans()):
        params["timestamp_granularities"] = draw(
            st.lists(st.sampled_from(["word", "segment"]), min_size=1, max_size=2, unique=True)
        )
    if draw(st.booleans()):
        params["include"] = ["logprobs"]
    if draw(st.booleans()):
        strategy = {"type": "server_vad"}
        if draw(st.booleans()):
            strategy["threshold"] = draw(st.floats(min_value=0, max_value=1))
        if draw(st.booleans()):
            strategy["prefix_padding_ms"] = draw(st.integers(0, 2000))
        params["chunking_strategy"] = draw(st.sampled_from([strategy, "auto"]))
    return params


@given(params=transcription_params())
@settings(max_examples=400)
# A prompt that happens to look like JSON is still the prompt, not a list or object.
@example(params={"model": "whisper-1", "prompt": "[1]"})
@example(params={"model": "whisper-1", "prompt": "{}"})
def test_sdk_transcription_forms_fold_back_to_what_the_user_passed(params):
    folded = fold_form(sdk_items(params), LIST_FIELDS)
    form = msgspec.convert(folded, TranscriptionForm, strict=False)
    for key, value in params.items():
        got = getattr(form, key)
        if key == "chunking_strategy" and isinstance(value, dict):
            # The SDK wrote each value with str(); the form reads them back as the
            # numbers they were (the fields left out take OpenAI's defaults).
            for name, given in value.items():
                assert getattr(got, name) == given, (name, got, given)
        elif isinstance(value, float):
            assert got == float(_sdk_scalar(value))
        else:
            assert got == value, (key, got, value)


def _sdk_scalar(value):
    return sdk_items({"v": value})[0][1]


@given(
    values=st.dictionaries(
        st.text(st.characters(exclude_characters="[]\x00"), min_size=1, max_size=8),
        st.lists(_text, min_size=1, max_size=4) | _text,
        max_size=5,
    )
)
@settings(max_examples=400)
# A list item with a comma is one item when sent as name[]; only a bare key is comma-split.
@example(values={"known_speaker_names": ["Smith, John", "Ann"]})
@example(values={"include": [" "]})
def test_repeated_bracket_keys_keep_every_item_as_sent(values):
    """``name[]=a&name[]=b`` is the list [a, b], item for item, whatever the items hold;
    a plain key is the string sent."""
    lists = [name for name, value in values.items() if isinstance(value, list)]
    folded = fold_form(sdk_items(values), lists)
    assert folded == values


@given(
    items=st.lists(st.sampled_from(["word", "segment", "logprobs"]), min_size=1, max_size=3),
    spaces=st.sampled_from([",", ", ", " , "]),
)
def test_hand_written_comma_lists_and_json_strings_fold_like_bracket_keys(items, spaces):
    """Clients that skip the brackets send ``name=a,b`` or a JSON array string; both mean
    the same list as repeated ``name[]`` keys."""
    bracketed = fold_form([("include[]", item) for item in items], ["include"])
    assert fold_form([("include", spaces.join(items))], ["include"]) == bracketed
    assert fold_form([("include", json.dumps(items))], ["include"]) == bracketed


@given(
    strategy=st.fixed_dictionaries(
        {"type": st.just("server_vad")},
        optional={"threshold": st.floats(0, 1), "silence_duration_ms": st.integers(0, 5000)},
    )
)
def test_an_object_as_a_json_string_equals_its_bracket_paths(strategy):
    as_json = fold_form([("chunking_strategy", json.dumps(strategy))])["chunking_strategy"]
    as_paths = fold_form(sdk_items({"chunking_strategy": strategy}))["chunking_strategy"]
    assert as_json == strategy
    assert as_paths == {k: _sdk_scalar(v) for k, v in strategy.items()}
