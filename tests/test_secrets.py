"""The Scrubber: the key masked as given, stripped, cut, and as a Bearer header; rows and log records."""

from __future__ import annotations

import logging

import pytest

from pipeline.models import ResultRow
from pipeline.secrets import MASK, Scrubber, ScrubbingFilter

KEY = "sk-proj-Zr4W8qLm2Nx7Ck5Tb9Vh3Jd6Fp1Gs0Ay"


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {KEY}.",
        f"Authorization: Bearer {KEY}",
        f"{'x' * 190} Bearer {KEY[:10]}",  # a cut that kept the head
        f"{KEY[-12:]} and the rest of the dump",  # a cut that kept the tail
        f"key={KEY[5:30]}&next",  # a middle piece
    ],
    ids=["whole", "bearer", "head", "tail", "middle"],
)
def test_the_key_and_any_long_piece_of_it_are_masked(text):
    """The key, and any run of 8+ of its characters, are gone from the text."""
    masked = Scrubber([KEY])(text)
    assert MASK in masked
    for i in range(len(KEY) - 7):
        assert KEY[i : i + 8] not in masked


def test_a_key_given_with_whitespace_is_masked_stripped_too():
    """A key read as 'KEY  ' is sent stripped, so servers echo it stripped: both forms are masked."""
    scrub = Scrubber([KEY + "  \n"])
    assert scrub(f"echo: {KEY}!") == f"echo: {MASK}!"
    assert scrub(f"echo: {KEY}  \n!") == f"echo: {MASK}!"


def test_ordinary_text_is_untouched_and_short_keys_only_masked_whole():
    """Captions that share a few characters with the key, and a Scrubber with no key, change nothing."""
    caption = "A photo of an olive-green sk-l sign by the proj- road, Zr4W."
    assert Scrubber([KEY])(caption) == caption
    assert Scrubber([])(f"{KEY}") == KEY and Scrubber([None])("text") == "text"
    assert Scrubber(["EMPTY"])("EMPTY and EMPT") == f"{MASK} and EMPT"


def test_any_bearer_token_is_masked():
    """Whatever followed 'Bearer' was a credential, even a key this run does not hold."""
    assert Scrubber([KEY])("header Bearer abcdefghijklmnopqrstuv end") == f"header Bearer {MASK} end"


def test_bytes_are_masked_before_anyone_cuts_them():
    """A body is masked as a whole: parsing or truncating afterwards finds nothing of the key."""
    body = ("." * 190 + KEY + " tail").encode()
    masked = Scrubber([KEY]).scrub_bytes(body)
    assert masked == ("." * 190 + MASK + " tail").encode()
    assert Scrubber([KEY]).scrub_bytes(b"no secret here") == b"no secret here"


def test_a_row_has_every_text_field_masked_but_keeps_its_id():
    """caption, error_message, filter_results, captions...: masked; the id (the resume key) is kept."""
    row = ResultRow(
        id="row-1",
        url="https://x/a.jpg",
        status="error",
        caption=f"says {KEY}",
        error_message=f"HTTP 500 Bearer {KEY}",
        filter_results=f'{{"k": "{KEY}"}}',
        captions=[f"one {KEY}", "two"],
    )
    masked = Scrubber([KEY]).row(row)
    assert masked.id == "row-1" and masked.caption == f"says {MASK}"
    assert KEY[:8] not in repr(masked)
    clean = ResultRow(id="row-2", url="u", status="ok", caption="a cat")
    assert Scrubber([KEY]).row(clean) is clean


def test_the_log_filter_masks_messages_arguments_and_tracebacks():
    """A record's formatted message and its exception text pass the scrubber."""
    try:
        raise ValueError(f"header value Bearer {KEY}")
    except ValueError:
        import sys

        record = logging.LogRecord("caption", logging.ERROR, __file__, 1, "failed with %s", (KEY,), sys.exc_info())
    assert ScrubbingFilter(Scrubber([KEY])).filter(record)
    text = logging.Formatter().format(record)
    assert KEY not in text and "failed with ***" in text and "Bearer ***" in text
