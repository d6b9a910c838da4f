"""The one base of every error a user can fix (a bad config key, a malformed data file, a
damaged checkpoint, a reward function that misbehaves): its message names the file, line or key,
and the commands print it as one ``error:`` line with exit code 2 instead of a traceback."""

from __future__ import annotations


class EtegrlError(ValueError):
    """Bad input, named in the message. A ValueError, so callers that caught the specific
    errors as ValueError keep working."""
