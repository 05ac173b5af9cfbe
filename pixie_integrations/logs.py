"""The library's warnings reach the user of a plain script: WARNING and above go to stderr while the application has
configured no logging, and nowhere extra once it has.

A library usually adds only a ``NullHandler`` and leaves output to the application; but most scripts never configure
logging, and this package's warnings (documents cut to fit, an instruction an encoder ignores, bfloat16 emulated on a
CPU without bf16 units) change results. :class:`FallbackHandler` prints a record only when no other handler would
see it, as Python's own ``logging.lastResort`` does, with the logger's name in front. Any logging configuration
(``logging.basicConfig()``, a handler on the root or on the package's logger) takes over, and
``logging.getLogger("pixie_integrations").setLevel(logging.ERROR)`` silences the warnings.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["FallbackHandler", "add_fallback_handler"]


class FallbackHandler(logging.Handler):
    """Writes WARNING and above to stderr, one line each, while no other handler on the record's way would."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self._others_see(record):
            return
        try:
            # Looked up at every record: sys.stderr may have been replaced since import (pytest, notebooks).
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def _others_see(self, record: logging.LogRecord) -> bool:
        """Whether a handler other than a FallbackHandler sits on the record's path (its logger up to the root)."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(not isinstance(handler, FallbackHandler) for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


def add_fallback_handler(logger: logging.Logger) -> None:
    """Give ``logger`` a :class:`FallbackHandler` (once, however often this is called)."""
    if not any(isinstance(handler, FallbackHandler) for handler in logger.handlers):
        logger.addHandler(FallbackHandler())
