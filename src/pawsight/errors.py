"""The one exception type whose message is shown to the user as is (no traceback)."""


class PawsightError(Exception):
    """A problem the user can fix: bad arguments, missing folders, incompatible run directories."""
