"""Images as bytes and Pillow pictures: no torch, safe on the event loop's worker threads."""
