"""The torch-free vocabulary the bot and the engine share; imported on the event loop."""
