"""Typed errors of the local stack: a manifest the router cannot honour, a component that will not start."""

from __future__ import annotations


class DevstackError(Exception):
    """Base of every error raised by the local stack."""


class ManifestError(DevstackError):
    """A Broker, Trigger or PingSource manifest is invalid or uses something the router cannot honour."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
