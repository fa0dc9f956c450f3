"""The error hierarchy: every module raises these; only main.py turns them into exit codes.

The split that matters to a trader is "retry later" (the broker or data source is unreachable) versus
"stop, a human is needed" (bad configuration, bad data, a safety halt).
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_LOCKED = 75


class MomentumError(Exception):
    """Base of every error the product raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(MomentumError):
    """A setting, option or file the user gave is invalid."""

    exit_code = EXIT_BAD_INPUT


class DataError(MomentumError):
    """Market data is missing or malformed in a way that stops the command."""

    exit_code = EXIT_BAD_INPUT


class JournalError(MomentumError):
    """The journal file cannot be used (damaged, read-only, from a newer schema)."""

    exit_code = EXIT_BAD_INPUT


class JournalBusy(MomentumError):
    """The journal (or its migration lock) stayed locked by another process until the busy timeout ran out."""

    exit_code = EXIT_UNREACHABLE


class SimTimeError(ConfigError):
    """The simulated clock was asked to move backwards."""


class Unavailable(MomentumError):
    """A broker or data source could not be reached after retries."""

    exit_code = EXIT_UNREACHABLE


class BrokerUnavailable(Unavailable):
    """The broker did not answer usefully (timeout, 5xx, 429 after backoff)."""


class DataUnavailable(Unavailable):
    """The market-data source did not answer usefully."""


class OrderRejected(MomentumError):
    """The broker refused an order; the message carries the broker's reason."""

    def __init__(self, message: str, *, status_code: int | None = None, code: int | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class DuplicateClientOrderId(OrderRejected):
    """An order with this client_order_id already exists at the broker."""


class InsufficientQty(OrderRejected):
    """Shares are held by another open order (Alpaca 403 40310000)."""


class OrderNotFound(MomentumError):
    """The broker knows no order with this id."""


class CommandLocked(MomentumError):
    """Another process runs the same command on this journal (it holds the command's lock); cron tries again."""

    exit_code = EXIT_LOCKED


class ScanLocked(CommandLocked):
    """Another scan holds the scan lock."""


class PositionBusy(MomentumError):
    """Another command is acting on this position (it holds the symbol's position lock); try again shortly."""

    exit_code = EXIT_LOCKED
