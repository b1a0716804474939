"""Logging, configured once at start-up."""

from __future__ import annotations

import logging

from engine.worker import quiet_libraries


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
        quiet_libraries()
