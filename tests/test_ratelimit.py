"""Pacing arithmetic with a fake clock, header formats, and the run-wide pause."""

from __future__ import annotations

import itertools
import time

import anyio
import pytest

from pipeline.dialects.openai import parse_rate_limit_headers as openai_headers
from pipeline.fakes import FakeClock, VirtualClock
from pipeline.ratelimit import RateLimiter, parse_duration_s


def _grant_times(limiter: RateLimiter, clock: FakeClock, n: int, tokens: int = 1) -> list[float]:
    times = []

    async def go() -> None:
        for _ in range(n):
            await limiter.acquire(tokens)
            times.append(clock.now)

    anyio.run(go)
    return times


def test_rpm_is_spread_evenly_from_the_first_request():
    """At rpm 600 with no burst credit: one grant every 60/599 s (a request of room), so no 60 s window sees more than 600."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    times = _grant_times(limiter, clock, 1200)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(60 / 599 * 1.001, rel=1e-6) for g in gaps)
    window_counts = [sum(1 for t in times if start - 60 < t <= start) for start in times[::50]]
    assert max(window_counts) <= 600


def test_burst_credit_lets_a_burst_through_then_paces():
    """With burst_s = 1.0 at rpm 600, about a second's worth (10) go at once, then one every 0.1 s."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=600, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers, burst_s=1.0)
    times = _grant_times(limiter, clock, 30)
    at_once = sum(1 for t in times if t - times[0] < 0.01)
    assert 10 <= at_once <= 11
    assert times[29] - times[28] == pytest.approx(60 / 599 * 1.001, rel=1e-6)


def test_tpm_paces_by_tokens():
    """At tpm 60,000 and 1,000-token requests: one every 1000 * 60 / 59,000 s (a request of room)."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=60_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    times = _grant_times(limiter, clock, 10, tokens=1000)
    gap = 1000 * 60 / 59_000 * 1.001
    assert times[-1] - times[-2] == pytest.approx(gap, rel=1e-6)
    assert times[-1] - times[0] == pytest.approx(9 * gap, rel=1e-6)


def test_no_limits_means_no_waiting():
    """rpm and tpm unset: grants are immediate."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    limiter.observe({})  # answers are already coming back, without rate-limit headers
    assert _grant_times(limiter, clock, 50)[-1] == 1000.0


def test_pause_holds_every_dispatch_until_it_ends():
    """A 429's Retry-After pauses the next grants for everyone."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    limiter.observe({})  # answers are already coming back, without rate-limit headers
    limiter.pause(2.5)
    assert _grant_times(limiter, clock, 3) == [1002.5, 1002.5, 1002.5]
    assert limiter.pauses == 1


def test_headers_saying_the_window_is_spent_pause_before_a_429():
    """remaining-requests 0 with a reset of 1.5s pauses 1.5 s."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    limiter.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"})
    assert limiter.paused_until == pytest.approx(1001.5)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("26.604s", 26.604),
        ("24h6m34s", 86794.0),
        ("55", 55.0),
        ("-1", None),
        ("0", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_reset_durations_in_every_format(raw, seconds):
    """Go durations (OpenAI), integer seconds (Azure), -1 as unknown."""
    assert parse_duration_s(raw) == (pytest.approx(seconds) if seconds is not None else None)


def test_a_429_slows_the_rate_once_per_event_and_successes_ramp_it_back():
    """Multiplicative decrease on a 429 (not once per 429 of the same burst), additive increase per success."""
    clock = FakeClock()
    limiter = RateLimiter(
        rpm=600, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers, decrease=0.5, increase=0.1
    )
    for _ in range(5):  # a burst of 429s from requests already in flight
        limiter.rate_limited(2.0)
    assert limiter.factor == 0.5 and limiter.decreases == 1 and limiter.paused_until == pytest.approx(1002.0)
    times = _grant_times(limiter, clock, 3)
    assert times[0] == pytest.approx(1002.0) and times[2] - times[1] == pytest.approx(
        2 * 60 / 599 * 1.001, rel=1e-6
    )  # half rate
    for _ in range(5):
        limiter.settle(_grant(limiter, clock), prompt_tokens=None)
    assert limiter.factor == pytest.approx(1.0)


def _grant(limiter, clock):
    async def go():
        return await limiter.acquire(10, 0)

    return anyio.run(go)


def test_limits_are_learned_from_headers_when_the_config_leaves_them_open():
    """rpm/tpm unset: x-ratelimit-limit-* with a reset within a minute set the pace; a day-scale reset does not."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    limiter.observe({"x-ratelimit-limit-requests": "10000", "x-ratelimit-reset-requests": "24h6m34s"})
    assert limiter.rpm is None  # that header described requests per day
    limiter.observe(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "599",
            "x-ratelimit-reset-requests": "100ms",
            "x-ratelimit-limit-tokens": "100000",
            "x-ratelimit-reset-tokens": "6ms",
        }
    )
    assert (limiter.rpm, limiter.tpm) == (600, 100000)
    times = _grant_times(limiter, clock, 5)
    assert times[-1] - times[-2] == pytest.approx(60 / 599 * 1.001, rel=1e-6)
    configured = RateLimiter(rpm=300, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    configured.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-reset-requests": "1s"})
    assert configured.rpm == 300  # the config wins over headers


def test_with_no_limit_known_a_429_caps_the_rate_at_what_tripped_it():
    """No config and no headers: the first 429 sets the pace from the dispatch rate just observed, then AIMD."""
    clock = FakeClock()
    limiter = RateLimiter(
        rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers, window_s=10.0, decrease=0.5
    )
    limiter.observe({})  # answers are already coming back, without rate-limit headers
    for _ in range(100):  # 100 requests over 5 s: 1,200/min observed
        _grant(limiter, clock)
        clock.now += 0.05
    limiter.rate_limited(1.0)
    assert limiter.rpm == 1200 and limiter.factor == 0.5  # 100 in 5 s → 1,200/min, then halved


def test_token_estimates_are_corrected_by_the_usage_that_comes_back():
    """Estimated 800 prompt tokens, the server counts 1,200: the scale converges to 1.5 and charges follow."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=60_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    for _ in range(40):
        grant = _grant_sized(limiter, 800)
        limiter.settle(grant, prompt_tokens=1200)
    assert limiter._prompt_scale == pytest.approx(1.5, rel=0.02)
    before = clock.now
    for _ in range(10):
        limiter.settle(_grant_sized(limiter, 800), prompt_tokens=1200)
    assert (clock.now - before) == pytest.approx(10 * 1200 * 60 / 60_000, rel=0.05)  # 1.2 s per 1,200-token request


def _grant_sized(limiter, prompt):
    async def go():
        return await limiter.acquire(prompt, 0)

    return anyio.run(go)


def test_the_correction_stays_stable_with_many_requests_in_flight():
    """64 grants out at once, then settled: the scale converges to the true ratio instead of feeding on itself."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=100_000_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    for _ in range(20):
        in_flight = [_grant_sized(limiter, 800) for _ in range(64)]
        for grant in in_flight:
            limiter.settle(grant, prompt_tokens=1200)
    assert limiter._prompt_scale == pytest.approx(1.5, rel=0.02)
    assert limiter._tat_tokens - clock.now < 1.0


def test_a_young_run_measures_its_rate_over_the_time_it_has_run():
    """30 dispatches in the first 0.3 s are ~1,800/min, not 30 per 10 s window."""
    clock = FakeClock()
    limiter = RateLimiter(
        rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers, window_s=10.0, decrease=0.5
    )
    limiter.observe({})  # answers are already coming back, without rate-limit headers
    for _ in range(30):
        _grant(limiter, clock)
        clock.now += 0.01
    limiter.rate_limited(0.2)
    assert limiter.rpm == 1800


def _start_workers(tg, limiter: RateLimiter, n: int, record) -> None:
    """``n`` workers, each acquiring one slot and then calling ``record`` with its number."""

    async def worker(i: int) -> None:
        await limiter.acquire(10)
        record(i)

    for i in range(n):
        tg.start_soon(worker, i)


def test_with_no_limit_known_the_first_request_probes_alone():
    """Before any answer, one request goes and the others wait for its headers; then they are paced by them."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    sent: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            _start_workers(tg, limiter, 5, lambda _: sent.append(clock.now))
            await anyio.sleep(0)  # let the probe go and the others start waiting
            assert len(sent) == 1
            clock.now += 1.5  # the probe's answer arrives, with the server's limit
            limiter.observe({"x-ratelimit-limit-requests": "600", "x-ratelimit-reset-requests": "100ms"})

    anyio.run(main)
    assert len(sent) == 5 and sent[0] == 1000.0 and min(sent[1:]) >= 1001.5
    assert limiter.rpm == 600  # the rest were paced by what the probe's answer said


def test_the_requests_waiting_on_the_probe_go_as_soon_as_its_answer_arrives():
    """Woken by the answer itself, not by a poll some milliseconds later (on the real clock)."""
    limiter = RateLimiter(rpm=None, tpm=None, clock=time.monotonic, sleep=anyio.sleep, read_headers=openai_headers)
    sent: list[int] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            _start_workers(tg, limiter, 5, sent.append)
            await anyio.wait_all_tasks_blocked()
            assert sent == [0]
            limiter.observe({})  # the probe's answer, naming no limit
            await anyio.wait_all_tasks_blocked()
            assert sorted(sent) == [0, 1, 2, 3, 4]

    anyio.run(main)


def test_a_probe_that_never_answers_holds_the_others_for_probe_wait_s_of_the_limiters_clock():
    """The bound is on the injected clock, like every other wait of the limiter: on virtual time the
    others go 10 virtual seconds after the probe, at once in real time."""
    clock = VirtualClock()
    limiter = RateLimiter(rpm=None, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    sent: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            _start_workers(tg, limiter, 4, lambda _: sent.append(clock.now))

    clock.run(main)
    assert sent == [1000.0, 1010.0, 1010.0, 1010.0]


def test_a_known_limit_needs_no_probe():
    """rpm configured: requests are paced from the first one, nobody waits for an answer."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=6000, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    assert _grant_times(limiter, clock, 3)[-1] - 1000.0 == pytest.approx(0.02, rel=0.01)


def test_large_requests_leave_room_for_the_one_a_sliding_window_catches_extra():
    """tpm 100,000 and 1,420-token requests: never more than 70 (99,400 tokens) in any 60 s window."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=100_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    times = _grant_times(limiter, clock, 300, tokens=1420)
    worst = max(sum(1 for t in times if start - 60 < t <= start) for start in times)
    assert worst * 1420 <= 100_000
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60 * 1420 / 100_000
    assert rate > 0.97  # of the token limit


def test_corrections_never_move_waiting_slots_into_a_burst():
    """64 workers queue for slots; answers report fewer tokens than charged. Admissions still fit a 60 s window."""
    clock = VirtualClock()
    limiter = RateLimiter(rpm=None, tpm=100_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    admitted: list[tuple[float, int]] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            grant = await limiter.acquire(1460, 300)
            admitted.append((clock.now, 1120 + 300))  # what the server counts
            limiter.settle(grant, prompt_tokens=1120)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(worker, 4)

    clock.run(main)
    assert len(admitted) == 256
    worst = max(sum(n for t, n in admitted if start - 60 < t <= start) for start, _ in admitted)
    assert worst <= 100_000


def test_early_over_estimates_are_not_locked_in_by_workers_queued_at_the_start():
    """64 workers start at once with a 30% over-estimate; once answers teach the scale, the pace is the true one."""
    clock = VirtualClock()
    limiter = RateLimiter(rpm=None, tpm=100_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)
    admitted: list[float] = []

    async def worker() -> None:
        for _ in range(4):
            grant = await limiter.acquire(1460, 300)
            admitted.append(clock.now)
            await clock.sleep(1.5)  # the answer's latency
            limiter.settle(grant, prompt_tokens=1120)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(worker)

    clock.run(main)
    admitted.sort()
    # Over the whole run, start included: slots booked at the start at the over-estimate would cost ~6%.
    rate = (len(admitted) - 1) / (admitted[-1] - admitted[0]) * 60 * 1420 / 100_000
    assert rate > 0.95


def test_duration_nan_is_unknown_and_inf_is_forever():
    assert parse_duration_s("nan") is None and parse_duration_s("inf") == float("inf")


def test_a_429_asking_for_longer_than_max_wait_raises_at_once():
    """A 429 with a day's wait raises WaitTooLongError quoting the wait and when to resume (wall clock injected)."""
    from pipeline.errors import WaitTooLongError

    clock = FakeClock()
    limiter = RateLimiter(
        rpm=600,
        tpm=None,
        clock=clock,
        sleep=clock.sleep,
        read_headers=openai_headers,
        max_wait_s=300,
        wall_clock=lambda: 0.0,
    )
    with pytest.raises(WaitTooLongError) as caught:
        limiter.rate_limited(86400.0)
    message = str(caught.value)
    assert (
        "86400 s (1 d 0 h)" in message and "after 1970-01-02 00:00 UTC" in message and "max_wait_s (300 s)" in message
    )
    with pytest.raises(WaitTooLongError, match="forever"):
        limiter.rate_limited(float("inf"))


def test_a_reset_of_a_day_lets_the_answer_through_and_the_next_grant_raises():
    """remaining 0 with a reset of 24h: observe() does not raise (its answer is kept); the next acquire does."""
    from pipeline.errors import WaitTooLongError

    clock = FakeClock()
    limiter = RateLimiter(
        rpm=600, tpm=None, clock=clock, sleep=clock.sleep, read_headers=openai_headers, max_wait_s=300
    )
    limiter.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "24h0m0s"})

    async def go() -> None:
        await limiter.acquire(10)

    with pytest.raises(WaitTooLongError, match="x-ratelimit-reset-requests"):
        anyio.run(go)
    assert clock.now == 1000.0  # refused without waiting


def test_absurd_usage_and_max_tokens_do_not_push_the_schedule_far_ahead():
    """A usage of 2^63-1 moves the TPM schedule by at most about a minute; max_tokens of 10^9 spaces grants
    a couple of minutes apart, not 10^6 s."""
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, tpm=100_000, clock=clock, sleep=clock.sleep, read_headers=openai_headers)

    async def go() -> None:
        grant = await limiter.acquire(1000, 300)
        limiter.settle(grant, prompt_tokens=2**63 - 1)
        before = clock.now
        await limiter.acquire(1000, 300)
        assert clock.now - before < 200
        first = clock.now
        await limiter.acquire(1000, 10**9)
        await limiter.acquire(1000, 10**9)
        assert clock.now - first < 300

    anyio.run(go)
