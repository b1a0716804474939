"""What the cogs share: presenters, result buttons, options and autocompletes, replies."""
