"""/train as a job kind, and the LoRAs and embeddings members own."""
