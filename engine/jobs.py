"""A job as the engine sees it. No torch here: the bot's queue holds these."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.params import GenerationParams, Progress


@dataclass(slots=True)
class EngineJob:
    """One job as the engine sees it. `report` is called on the engine thread."""

    job_id: int
    params: GenerationParams
    report: Callable[[Progress], None] = lambda progress: None
    cancel: threading.Event = field(default_factory=threading.Event)
    # The bytes of the stored images `params` names (init, mask, control), by key.
    inputs: dict[str, bytes] = field(default_factory=dict)
