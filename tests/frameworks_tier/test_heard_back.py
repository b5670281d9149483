"""The heard-back check the voice tests share (helpers.assert_heard), on a CI run's answer:
the voice read its URL out symbol by symbol, and Whisper wrote those words down."""

from __future__ import annotations

import pytest

from tests.frameworks_tier.helpers import assert_heard

SAID = ("You can use the weather api and check if it's sunny:\n```python\n"
        'https://api.openweathermap.org/data/2.5/cartodb?u="Paris"&app_key=1380160723&q="Sant')
HEARD = ("You can use the weather API and check if it's sunny Python HTTPS colon slash slash API "
         "dot open weather map dot org slash day a slash 2.5 slash cardabube equals pairs and app "
         "key equals 1,380,160,723, and Q equals And that's it. Thank you.")


def test_an_answer_that_wrote_a_url_is_heard_as_it_was_spoken():
    assert_heard(SAID, HEARD)


@pytest.mark.parametrize("heard", [
    "The quick brown fox jumps over the lazy dog again and again today.", "", "Thank you.",
])
def test_other_speech_or_none_is_not_that_answer(heard):
    with pytest.raises(AssertionError):
        assert_heard(SAID, heard)
