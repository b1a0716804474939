"""Engine failures, each with a message a member can read."""

from __future__ import annotations


class EngineError(Exception):
    """A job failed in the engine; `user_message` is safe and short enough to show."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class ModelLoadError(EngineError):
    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"Model {model} could not be loaded: {reason}")
        self.model = model
        self.reason = reason


class OutOfMemory(EngineError):
    def __init__(self) -> None:
        super().__init__("The GPU ran out of memory. Try a smaller size or fewer images.")


class JobCancelled(EngineError):
    def __init__(self) -> None:
        super().__init__("Cancelled.")


class EngineStopped(EngineError):
    def __init__(self) -> None:
        super().__init__("The engine is shutting down; the job was not run.")
