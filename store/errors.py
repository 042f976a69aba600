"""Errors of the store package."""


class StoreError(Exception):
    """The session database cannot be opened or used."""


class SessionError(Exception):
    """A session id is unknown or the session is in the wrong state for the command."""
