"""Errors caused by what a user gave us: reported as one sentence, never as a traceback."""


class UserError(Exception):
    """A bad input, file or setting; its message is one clear sentence naming it."""
