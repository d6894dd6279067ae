"""The root of every error tortie raises on purpose.

Each package defines a small hierarchy under :class:`TortieError`. The CLI prints ``str(err)``
of any ``TortieError`` as the user's message and exits non-zero; anything else is a bug and
gets a traceback. So messages say what went wrong, where, and how to fix it.
"""


class TortieError(Exception):
    """An error with a message meant for the user."""
