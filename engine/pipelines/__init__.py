"""torch and diffusers: run only on the engine thread (engine.worker)."""
