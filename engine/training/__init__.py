"""/train on the engine thread: the training loop, its methods and the sample images."""
