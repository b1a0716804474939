"""The engine: what turns parameters into images, in four rooms that say where they run.

- `engine.api`: the torch-free vocabulary the bot imports on its event loop (parameters,
  samplers, model specs, jobs, errors, infotext, prompt syntax).
- `engine.imaging`: Pillow and numpy only, safe on any thread (untrusted attachments, PNG
  encoding, masks, training images).
- `engine.pipelines`: torch and diffusers, run only on the engine thread (loading, the
  generation modes, LoRA, previews, the safety checker).
- `engine.training`: torch, on the engine thread (LoRA and textual-inversion training).

`engine.worker.EngineWorker` is the thread itself. Importing this package does no work.
"""
