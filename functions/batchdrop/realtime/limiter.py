"""The real-time lane's pace for one provider: how many requests a second it starts, and how many run at
once.

It learns the pace from the provider's own answers (every answer the SDK gets, its retries included,
reaches `observe`):
- the rate-limit headers, where the provider sends them, say the limit and what is left of it: the
  pace never passes the limit, and when nothing is left it waits for the window to free up;
- a 429 halves the pace and holds every start until its retry-after (multiplicative decrease);
- each answer that is not a 429 adds a little (additive increase), up to the limit known.
So a lane with headers runs at the limit from its first answers, and one without (Bedrock) finds it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime

# Where no limit is known yet, the lane starts at this many requests a second and finds its way up.
START_RATE = 2.0
MIN_RATE = 0.2
# Each answer adds this much to the pace, over the pace: +1 request/s for every second's worth of
# answers, the "additive increase" of AIMD in rate terms.
INCREASE = 1.0
DECREASE = 0.5
# The share of a known limit the pace aims at: a window counted by the provider is not quite ours
# (clocks, calls from elsewhere), and a 429 costs more than the few percent kept in hand.
HEADROOM = 0.97

_N = r"\d+(?:\.\d+)?"
_OPENAI_DURATION = re.compile(rf"(?:(?P<h>{_N})h)?(?:(?P<m>{_N})m(?!s))?(?:(?P<s>{_N})s)?(?:(?P<ms>{_N})ms)?")


def seconds_of(value: str, now: float) -> float | None:
    """A reset or retry-after header as seconds from now: plain seconds ("2", "0.5"), OpenAI's
    durations ("1s", "6m0s", "120ms"), or an RFC 3339 time (Anthropic's "...-reset")."""
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    match = _OPENAI_DURATION.fullmatch(value)
    if match and any(match.groupdict().values()):
        parts = {k: float(v) for k, v in match.groupdict().items() if v}
        return parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0) + parts.get("ms", 0) / 1000
    try:
        return max(0.0, datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() - now)
    except ValueError:
        return None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """How long the provider asks a client to wait (retry-after-ms, then retry-after)."""
    if "retry-after-ms" in headers:
        with_ms = seconds_of(headers["retry-after-ms"], now)
        if with_ms is not None:
            return with_ms / 1000
    if "retry-after" in headers:
        return seconds_of(headers["retry-after"], now)
    return None


# (limit, remaining, reset) header names of the requests window, by provider family: OpenAI and Azure
# (platform.openai.com/docs/guides/rate-limits, "Rate limits in headers"), Anthropic
# (docs.anthropic.com/en/api/rate-limits, "Response headers").
_WINDOW_HEADERS = (
    ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    (
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ),
)


class Limiter:
    """The pace and the concurrency of one provider's calls in one invocation (asyncio, one loop).

    The provider's limit is the account's, shared by every invocation of the lane running at once:
    `peers` says how many do (the real-time queue's messages in flight, ten to an invocation), and
    each takes its share of the limit, a larger one as the others end."""

    def __init__(
        self,
        concurrency: int,
        rpm: int | None = None,
        clock: Callable[[], float] = time.time,
        peers: Callable[[], int] = lambda: 1,
    ) -> None:
        self.clock = clock
        self.peers = peers
        # The account's limit in requests a second, less the headroom (None: not known yet).
        self.limit = rpm / 60 * HEADROOM if rpm else None
        self.rate = self.ceiling or START_RATE
        self._slots = asyncio.Semaphore(concurrency)
        self._next = 0.0
        self._paused_until = 0.0
        # Counts, for the worker's pace record and the benchmark.
        self.calls = 0
        self.throttled = 0

    @property
    def ceiling(self) -> float | None:
        """This invocation's share of the known limit."""
        return None if self.limit is None else self.limit / max(1, self.peers())

    async def __aenter__(self) -> Limiter:
        await self._slots.acquire()
        try:
            while True:
                now = self.clock()
                start = max(now, self._next, self._paused_until)
                if start <= now:
                    ceiling = self.ceiling
                    rate = self.rate if ceiling is None else min(self.rate, ceiling)
                    self._next = max(self._next, now) + 1.0 / rate
                    return self
                await asyncio.sleep(start - now)
        except BaseException:
            self._slots.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._slots.release()

    def hold(self, seconds: float) -> None:
        """No call starts for `seconds` (a 429's retry-after, a window used up)."""
        self._paused_until = max(self._paused_until, self.clock() + seconds)

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        now = self.clock()
        self.calls += 1
        for limit_name, remaining_name, reset_name in _WINDOW_HEADERS:
            if limit_name in headers:
                self._window(headers, limit_name, remaining_name, reset_name, now)
                break
        if status == 429:
            self.throttled += 1
            self.rate = max(MIN_RATE, self.rate * DECREASE)
            wait = retry_after(headers, now)
            self.hold(1.0 if wait is None else wait)
            return
        self.rate += INCREASE / max(1.0, self.rate)
        ceiling = self.ceiling
        if ceiling is not None:
            # Up to the whole limit: the share is applied where calls start, and grows as peers end.
            self.rate = min(self.rate, ceiling * max(1, self.peers()))

    def _window(self, headers: Mapping[str, str], limit: str, remaining: str, reset: str, now: float) -> None:
        try:
            per_minute = float(headers[limit])
        except ValueError:
            return
        # Requests per minute, as both families count them: the pace never passes it.
        known = per_minute / 60 * HEADROOM
        if self.limit is None or known < self.limit:
            # The limit is known: run at it from now on (a 429 still halves the pace for a while).
            self.limit = known
            self.rate = known
        try:
            left = float(headers.get(remaining, "1"))
        except ValueError:
            return
        if left < 1:
            wait = seconds_of(headers.get(reset, ""), now)
            if wait:
                self.hold(wait)
