"""The typed errors of the XPipe domain, one family per cause, so a caller decides on the type.

The functions never inspect messages: ``xpipe.http.status_for`` maps these types (and the journal's and
the backends' own hierarchies) to HTTP status codes in one place. Every message is safe to show to the
caller: none ever contains a token, a secret or a whole request body.
"""

from __future__ import annotations


class XPipeError(Exception):
    """Base of every error raised by the xpipe domain."""


class RequestError(XPipeError):
    """The request itself is wrong; repeating it unchanged can never succeed (a 4xx, never retried)."""


class MalformedEvent(RequestError):
    """The CloudEvent is malformed or its data does not match the event type's schema (400)."""


class NotACloudEvent(RequestError):
    """The request is not a CloudEvent at all: no ``ce-`` headers, no structured content type (415)."""


class PayloadTooLarge(RequestError):
    """The request body is larger than ``XPIPE_MAX_BODY_BYTES`` (413)."""


class Unauthenticated(RequestError):
    """No ``X-Token-XPipe`` header, or a token that matches no known token (401)."""


class Forbidden(RequestError):
    """A valid token whose scope does not allow this function (403)."""


class UnprocessableRequest(RequestError):
    """A well-formed event whose content the domain refuses (422)."""


class UnknownTemplate(UnprocessableRequest):
    """The submit names a template that is not in the catalog (422)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown template {name!r}")
        self.name = name


class InvalidParams(UnprocessableRequest):
    """A submit's params do not match the template: the message names the parameter (422)."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"param {param!r}: {reason}")
        self.param = param
        self.reason = reason


class CatalogError(XPipeError):
    """The template catalog is broken; raised at start-up, naming the file and the field."""

    def __init__(self, file: str, field: str, reason: str) -> None:
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason


class ConfigurationError(XPipeError):
    """An environment variable has a value the functions cannot work with; raised at start-up."""


class Overloaded(XPipeError):
    """Too many requests are in flight; the caller should retry later (429)."""
