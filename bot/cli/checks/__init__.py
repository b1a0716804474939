"""The doctor's checks, by subject: the machine, storage, models and the token.

Each returns `Finding`s (findings.py); bot/cli/doctor.py picks which run before the bot
starts and which `python -m bot doctor` prints. None reaches the network, and torch and
the Hugging Face libraries are imported inside the checks that need them, so that
importing these modules stays cheap.
"""
