"""Who hears about each job: the observer the caller gave, who asked where (for the
server's rules at review time), and per kind who tells the members of jobs nobody waits
on any more (restored after a restart), as the Discord layer registers them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.jobs.contracts import Requester
from bot.jobs.kinds import JobKind
from data.jobs import Job


class Audience:
    def __init__(self) -> None:
        self._observers: dict[int, Any] = {}
        self._requesters: dict[int, Requester] = {}
        self._fallbacks: dict[JobKind, Callable[[Job], Any]] = {}

    def listen(self, job_id: int, observer: Any | None, requester: Requester | None) -> None:
        if observer is not None:
            self._observers[job_id] = observer
        if requester is not None:
            self._requesters[job_id] = requester

    def hear_restored(self, kind: JobKind, observer: Callable[[Job], Any] | None) -> None:
        if observer is None:
            self._fallbacks.pop(kind, None)
        else:
            self._fallbacks[kind] = observer

    def fallback(self, job: Job) -> Any | None:
        factory = self._fallbacks.get(JobKind.of(job))
        return factory(job) if factory is not None else None

    def observer(self, job_id: int) -> Any | None:
        return self._observers.get(job_id)

    def take_observer(self, job_id: int) -> Any | None:
        return self._observers.pop(job_id, None)

    def take_requester(self, job_id: int) -> Requester:
        return self._requesters.pop(job_id, Requester())

    def forget(self, job_id: int) -> Any | None:
        """The job has ended: who was listening, for the last word."""
        self._requesters.pop(job_id, None)
        return self._observers.pop(job_id, None)
