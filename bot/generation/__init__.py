"""Image jobs: members' options into parameters and prices, attachments, result buttons."""
