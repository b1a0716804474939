"""Logging, configured once at start-up."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO", *, quiet_ml: bool = True) -> None:
    """`quiet_ml` also mutes diffusers' and transformers' progress bars (importing them takes
    seconds, so console commands that never touch a model pass False)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    # Libraries that are chatty at INFO: progress bars and per-request lines.
    logging.getLogger("discord.http").setLevel(logging.WARNING)
    if quiet_ml:
        quiet_ml_libraries()


def quiet_ml_libraries() -> None:
    """Mute diffusers' and transformers' progress bars and warnings. Importing them takes
    seconds, so the console calls this only once its arguments and set-up are checked."""
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
