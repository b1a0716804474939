"""Engine failures, each with a message a member can read."""

from __future__ import annotations


class EngineError(Exception):
    """A job failed in the engine; `user_message` is safe and short enough to show."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class ModelLoadError(EngineError):
    """`reason` is shown to members only when it is ours (`public`): library errors can
    carry the owner's file paths, so members read that the log has the details.

    `owner_reason` is what the owner's console and log get instead of `reason` when the two
    differ: the precise cause (no network, no such path, no CUDA) and the fix, paths and
    setting names included, on one line."""

    def __init__(
        self, model: str, reason: str, *, public: bool = True, owner_reason: str | None = None
    ) -> None:
        shown = reason if public else "the bot's log has the details"
        super().__init__(f"Model {model} could not be loaded: {shown}")
        self.model = model
        self.reason = reason
        self.owner_reason = owner_reason or reason

    @property
    def detail(self) -> str:
        return f"Model {self.model} could not be loaded: {self.owner_reason}"


class OutOfMemory(EngineError):
    def __init__(self) -> None:
        super().__init__("The GPU ran out of memory. Try a smaller size or fewer images.")


class JobCancelled(EngineError):
    def __init__(self) -> None:
        super().__init__("Cancelled.")


class EngineStopped(EngineError):
    def __init__(self) -> None:
        super().__init__("The engine is shutting down; the job was not run.")
