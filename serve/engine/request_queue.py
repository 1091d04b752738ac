"""The waiting queue: first come first served, or by priority (lower first, ties by arrival).

Preempted requests go back in front (FCFS) or to their place by key (priority): they are older than
anything that arrived since, and they already paid for part of their work.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from serve.engine.request import Request


class WaitingQueue:
    def __init__(self, policy: str = "fcfs") -> None:
        self.policy = policy
        self._fifo: deque[Request] = deque()
        self._heap: list[tuple[int, float, int, Request]] = []
        self._seq = itertools.count()  # heap tie-breaker: Request itself is not orderable

    def __len__(self) -> int:
        return len(self._fifo) if self.policy == "fcfs" else len(self._heap)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self):  # noqa: ANN204 - a plain iterator over queued requests, any order
        return iter(self._fifo) if self.policy == "fcfs" else (e[3] for e in self._heap)

    def push(self, req: Request) -> None:
        if self.policy == "fcfs":
            self._fifo.append(req)
        else:
            heapq.heappush(self._heap, (req.priority, req.arrival_time, next(self._seq), req))

    def push_front(self, req: Request) -> None:
        if self.policy == "fcfs":
            self._fifo.appendleft(req)
        else:
            self.push(req)

    def peek(self) -> Request:
        return self._fifo[0] if self.policy == "fcfs" else self._heap[0][3]

    def pop(self) -> Request:
        return self._fifo.popleft() if self.policy == "fcfs" else heapq.heappop(self._heap)[3]

    def remove(self, req: Request) -> bool:
        """O(n): only aborts of queued requests come here."""
        if self.policy == "fcfs":
            try:
                self._fifo.remove(req)
            except ValueError:
                return False
            return True
        for i, entry in enumerate(self._heap):
            if entry[3] is req:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False
