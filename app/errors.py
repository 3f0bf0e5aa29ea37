"""Errors a user can act on: one line saying what is wrong and how to fix it."""


class UserError(Exception):
    """Printed as a single line by the CLI (exit status 2); never a traceback."""
