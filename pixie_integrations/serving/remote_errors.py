"""What :class:`~pixie_integrations.serving.RemoteScorer` raises when a server cannot be reached or refuses."""

from __future__ import annotations

__all__ = ["RETRY_STATUSES", "RemoteScorerError", "unexpected_answer"]

RETRY_STATUSES = frozenset({429, 503})
"""HTTP statuses that a later try may not get (overload, unavailability)."""


class RemoteScorerError(RuntimeError):
    """A scoring server could not be reached or refused a request; ``url`` and ``status_code`` say which and how."""

    def __init__(
        self, message: str, *, url: str, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.url = url
        """The URL that was requested."""
        self.status_code = status_code
        """The HTTP status the server answered with; ``None`` when no answer came."""
        self.retry_after = retry_after
        """Seconds the server asked to wait before retrying (its ``Retry-After``), if it said."""
        self.retryable = status_code in RETRY_STATUSES
        """Whether a later try may succeed (overload, unavailability, a failed connection)."""


def unexpected_answer(url: str, what: str) -> RemoteScorerError:
    """The error for an answer that is not of the shape the API promises (often: the wrong ``api=``)."""
    return RemoteScorerError(f"Unexpected answer from {url} (is api= right?): {what}", url=url)
