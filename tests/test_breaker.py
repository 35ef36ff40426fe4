"""The circuit breaker's two ways to open, as a pure object: the endpoint looks down, or it refuses every row alike."""

from pipeline.breaker import CircuitBreaker, refusal_signature
from pipeline.models import Failure


def refusal(message: str, *, status: int = 400) -> Failure:
    return Failure("bad_request", message, retryable=False, http_status=status)


def test_the_same_refusal_on_ten_rows_opens_it_whatever_the_ids_and_numbers():
    breaker = CircuitBreaker(same_error_rows=10)
    for i in range(9):
        # A gateway's budget message: its running figures and request ids change every time.
        breaker.record(
            refusal(f"Budget has been exceeded! Current cost: {3.1 + i / 7}, Max budget: 3.0 req_a1b2c3d{i}e9")
        )
        assert not breaker.is_open
    breaker.record(refusal("Budget has been exceeded! Current cost: 4.2, Max budget: 3.0 req_zz99yy88xx"))
    assert breaker.is_open and breaker.refuses_every_row and not breaker.looks_down
    assert "10 rows in a row" in breaker.describe()


def test_refusals_that_name_their_row_never_open_it():
    breaker = CircuitBreaker(same_error_rows=3)
    for name in ("cat", "dog", "owl", "eel", "fox"):
        breaker.record(refusal(f"Invalid image URL: https://example.com/{name}.png could not be downloaded"))
    assert not breaker.is_open


def test_an_answer_between_refusals_resets_the_streak():
    breaker = CircuitBreaker(same_error_rows=3)
    for _ in range(5):
        breaker.record(refusal("Invalid model name passed in model=gpt-x"))
        breaker.record(refusal("Invalid model name passed in model=gpt-x"))
        breaker.record(None)
    assert not breaker.is_open


def test_retries_filters_and_endpoint_trouble_neither_extend_nor_break_a_streak():
    breaker = CircuitBreaker(same_error_rows=3)
    breaker.record(refusal("unknown parameter: foo"))
    breaker.record(Failure("rate_limited", "slow down", retryable=True, http_status=429))
    breaker.record(Failure("content_filter", "filtered", retryable=False, http_status=400))
    breaker.record(Failure("server_error", "oops", retryable=True, http_status=503))
    breaker.record(refusal("unknown parameter: foo"))
    assert not breaker.is_open
    breaker.record(refusal("unknown parameter: foo"))
    assert breaker.refuses_every_row


def test_a_different_status_is_a_different_refusal():
    a = refusal_signature(refusal("nope", status=400))
    b = refusal_signature(refusal("nope", status=422))
    assert a is not None and b is not None and a != b
    assert refusal_signature(Failure("bad_request", "x", retryable=True, http_status=400)) is None


def test_endpoint_failures_open_it_as_down():
    breaker = CircuitBreaker(window=10, min_attempts=5, threshold=0.8)
    for _ in range(5):
        breaker.record(Failure("server_error", "503", retryable=True, http_status=503))
    assert breaker.looks_down and not breaker.refuses_every_row
    assert breaker.describe() == "5 of the last 5 requests failed"


def test_refusals_naming_their_rows_size_or_url_differ():
    a = refusal_signature(refusal("image of 130512 tokens is over the limit of 128000"))
    b = refusal_signature(refusal("image of 99001 tokens is over the limit of 128000"))
    c = refusal_signature(refusal("cannot fetch https://cdn.example.com/a/0001.jpg"))
    d = refusal_signature(refusal("cannot fetch https://cdn.example.com/a/0002.jpg"))
    assert len({a, b, c, d}) == 4


def test_a_provider_download_timeout_is_the_endpoint_answering_not_down():
    """400 "Timeout while downloading" is retried as a timeout, but the endpoint answered: a block of
    rows on a slow image host must not stop the run (every resume would stop on the same rows)."""
    breaker = CircuitBreaker(window=10, min_attempts=5, threshold=0.8)
    for _ in range(10):
        breaker.record(Failure("timeout", "HTTP 400 Timeout while downloading", retryable=True, http_status=400))
    assert not breaker.is_open
    for _ in range(10):
        breaker.record(Failure("timeout", "read timed out", retryable=True))  # no answer at all
    assert breaker.looks_down
