"""The error type for problems a user can fix (bad input, missing data, wrong config).

The CLI prints these as one line and exits 1; anything else is a bug and keeps
its traceback under ``--debug``.
"""


class CrmscoreError(Exception):
    """A problem with the user's input or environment, explained in the message."""
