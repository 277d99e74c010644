"""A keyed work queue (client-go's ``workqueue`` semantics) and a client-side rate limiter.

* A key is queued at most once; adding a queued key again coalesces. Each add becomes ready after a
  short ``debounce``, so a burst of watch events for one key costs one pass.
* A key is never processed twice at once: one added while it is processed is queued again when
  :meth:`WorkQueue.done` is called.
* :meth:`WorkQueue.retry` requeues a failed key after an exponential backoff of its own
  (``base * 2**failures``, capped at ``cap``); :meth:`WorkQueue.forget` resets it after a success. One
  failing key never delays the others.
"""

from __future__ import annotations

import heapq
import threading
import time


class WorkQueue:
    def __init__(self, debounce: float = 0.05, base: float = 0.1, cap: float = 30.0):
        self.debounce, self.base, self.cap = debounce, base, cap
        self.cond = threading.Condition()
        self.heap: list[tuple[float, int, str]] = []
        self.ready_at: dict[str, float] = {}  # queued keys → when they become ready
        self.processing: set[str] = set()
        self.again: dict[str, float] = {}  # added while processing → delay to use on done
        self.failures: dict[str, int] = {}
        self.seq = 0
        self.closed = False

    def add(self, key: str, delay: float | None = None) -> None:
        delay = self.debounce if delay is None else delay
        with self.cond:
            if key in self.processing:
                self.again[key] = min(delay, self.again.get(key, delay))
                return
            when = time.monotonic() + delay
            if key in self.ready_at and self.ready_at[key] <= when:
                return
            self.ready_at[key] = when
            self.seq += 1
            heapq.heappush(self.heap, (when, self.seq, key))
            self.cond.notify()

    def get(self, timeout: float) -> str | None:
        """The next ready key (now marked as processing), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed:
                now = time.monotonic()
                while self.heap and self.ready_at.get(self.heap[0][2]) != self.heap[0][0]:
                    heapq.heappop(self.heap)  # superseded entry
                if self.heap and self.heap[0][0] <= now:
                    _, _, key = heapq.heappop(self.heap)
                    del self.ready_at[key]
                    self.processing.add(key)
                    return key
                wait = deadline - now
                if self.heap:
                    wait = min(wait, self.heap[0][0] - now)
                if deadline <= now:
                    return None
                self.cond.wait(max(wait, 0.001))
            return None

    def done(self, key: str) -> None:
        with self.cond:
            self.processing.discard(key)
            delay = self.again.pop(key, None)
        if delay is not None:
            self.add(key, delay)

    def retry(self, key: str) -> float:
        """Requeue ``key`` after its backoff; returns the delay."""
        with self.cond:
            n = self.failures.get(key, 0)
            self.failures[key] = n + 1
        delay = min(self.base * (2 ** n), self.cap)
        with self.cond:
            self.processing.discard(key)
            self.again.pop(key, None)
        self.add(key, delay)
        return delay

    def forget(self, key: str) -> None:
        with self.cond:
            self.failures.pop(key, None)

    def __len__(self) -> int:
        with self.cond:
            return len(self.ready_at)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class RateLimiter:
    """A token bucket: ``qps`` requests per second on average, bursts of ``burst``."""

    def __init__(self, qps: float, burst: int):
        self.qps, self.burst = qps, burst
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if self.qps <= 0:
            return
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.qps)
            self.last = now
            self.tokens -= 1
            delay = -self.tokens / self.qps if self.tokens < 0 else 0.0
        if delay:
            time.sleep(delay)
