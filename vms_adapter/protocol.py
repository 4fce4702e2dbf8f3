"""Journal wire protocol v1: the frame codec and the HELLO proofs, shared by client and service.

A frame is an 18-byte big-endian header followed by a UTF-8 JSON object (PROTOCOL.md is the normative
text; ``testdata/vectors.json`` holds golden frames)::

    magic "XJ" | version u8 | opcode u8 | flags u16 | request id u32 | body length u32 | CRC-32 u32

The codec is strict on purpose: a C or COBOL implementation on OpenVMS must be able to agree with it
byte for byte, so anything outside the spec (unknown flag bits, duplicate JSON keys, NaN, a body that is
not an object) is a ``ProtocolError`` rather than a guess. Decoding never raises anything else.

Standard library only: this module runs on VSI Python 3.10 for OpenVMS.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import secrets
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vms_adapter.errors import BAD_REQUEST, TOO_LARGE, UNSUPPORTED_VERSION, ProtocolError

MAGIC = b"XJ"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">2sBBHIII")
HEADER_BYTES = HEADER.size  # 18
MAX_BODY_BYTES = 32_000  # fits one RMS variable-length record (32,767 bytes)
MAX_REQUEST_ID = 0xFFFF_FFFF

FLAG_REPLY = 0x0001
FLAG_ERROR = 0x0002
_KNOWN_FLAGS = FLAG_REPLY | FLAG_ERROR

# HELLO: nonces are random bytes, sent as lower-case hex; proofs are HMAC-SHA256, lower-case hex.
NONCE_BYTES = 32
AUTH_HMAC_SHA256 = "hmac-sha256"
AUTH_NONE = "none"
_NONCE_HEX = re.compile(f"[0-9a-f]{{{2 * NONCE_BYTES}}}")
CLIENT_PROOF_TAG = b"xpipe-journal/v1 client proof\x00"
SERVER_PROOF_TAG = b"xpipe-journal/v1 server proof\x00"


class Opcode(enum.IntEnum):
    """Operation numbers (header byte 3). A reply carries the opcode of its request."""

    HELLO = 1
    COMMIT = 2
    READ_JOB = 3
    LIST_JOBS = 4
    SWEEP = 5
    ACK = 6
    STATS = 7
    PING = 8


@dataclass(frozen=True)
class Header:
    """A decoded frame header; ``opcode`` stays a plain int so an unknown one can be answered."""

    opcode: int
    flags: int
    request_id: int
    body_length: int
    crc32: int


@dataclass(frozen=True)
class Frame:
    """One protocol message: a request, a reply (``FLAG_REPLY``) or an error reply (plus ``FLAG_ERROR``)."""

    opcode: int
    request_id: int
    body: dict[str, Any] = field(default_factory=dict)
    flags: int = 0

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & FLAG_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)


class EncodedBody(dict[str, Any]):
    """A body together with its canonical encoding, made once elsewhere (the service encodes a COMMIT
    reply for its commit marker, then sends the same bytes); ``encode_body`` takes ``encoded`` as is.
    It must not be changed after it was encoded."""

    __slots__ = ("encoded",)

    def __init__(self, body: Mapping[str, Any], encoded: bytes) -> None:
        super().__init__(body)
        self.encoded = encoded


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The canonical body bytes: compact JSON, UTF-8, keys in the mapping's order, no NaN/Infinity."""
    if isinstance(body, EncodedBody):
        data = body.encoded
    elif not isinstance(body, Mapping):
        raise ProtocolError("a frame body must be a JSON object", code=BAD_REQUEST)
    else:
        try:
            data = _ENCODER.encode(body).encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
            raise ProtocolError(f"body is not encodable as JSON: {exc}", code=BAD_REQUEST) from None
    if len(data) > MAX_BODY_BYTES:
        raise ProtocolError(f"body is {len(data)} bytes, the limit is {MAX_BODY_BYTES}", code=TOO_LARGE)
    return data


def encode_frame(opcode: int, request_id: int, body: Mapping[str, Any], *, flags: int = 0) -> bytes:
    """Header plus body, ready for one ``sendall``."""
    if not 0 <= opcode <= 0xFF:
        raise ProtocolError(f"opcode {opcode} does not fit in a byte", code=BAD_REQUEST)
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise ProtocolError(f"request id {request_id} does not fit in 32 bits", code=BAD_REQUEST)
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown flag bits 0x{flags:04x}", code=BAD_REQUEST)
    return frame_with_body(opcode, request_id, encode_body(body), flags=flags)


def frame_with_body(opcode: int, request_id: int, data: bytes, *, flags: int = 0) -> bytes:
    """Header plus already-encoded body bytes (from ``encode_body``): lets a retry reuse the encoding."""
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, opcode, flags, request_id, len(data), zlib.crc32(data)) + data


def decode_header(data: bytes) -> Header:
    """Check and unpack the 18 header bytes; the body length is checked against the limit here."""
    if len(data) != HEADER_BYTES:
        raise ProtocolError(f"a header is {HEADER_BYTES} bytes, got {len(data)}")
    magic, version, opcode, flags, request_id, length, crc = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})",
            code=UNSUPPORTED_VERSION,
        )
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown flag bits 0x{flags:04x}")
    if length > MAX_BODY_BYTES:
        raise ProtocolError(
            f"body length {length} exceeds the limit of {MAX_BODY_BYTES} bytes", code=TOO_LARGE
        )
    return Header(opcode, flags, request_id, length, crc)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # built in C; a repeated key leaves fewer entries than pairs
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


# Built once: json.dumps/json.loads with non-default options construct a new coder on every call. No
# circular-reference check (bodies are decoded JSON or built by code; a cycle still fails, RecursionError).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False)
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)


def decode_body(header: Header, data: bytes) -> dict[str, Any]:
    """Check the CRC and parse the body as a strict JSON object."""
    if len(data) != header.body_length:
        raise ProtocolError(f"body is {len(data)} bytes, the header says {header.body_length}")
    crc = zlib.crc32(data)
    if crc != header.crc32:
        raise ProtocolError(f"body CRC-32 is 0x{crc:08x}, the header says 0x{header.crc32:08x}")
    try:
        text = data.decode("utf-8")
        body = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"body must be a JSON object, got {type(body).__name__}")
    return body


def decode_frame(data: bytes) -> Frame:
    """Decode a buffer holding exactly one frame."""
    if len(data) < HEADER_BYTES:
        raise ProtocolError(f"a frame is at least {HEADER_BYTES} bytes, got {len(data)}")
    header = decode_header(data[:HEADER_BYTES])
    body = decode_body(header, data[HEADER_BYTES:])
    return Frame(header.opcode, header.request_id, body, header.flags)


def read_frame(read_exact: Callable[[int], bytes]) -> Frame:
    """Read one frame through ``read_exact(n)``, which returns exactly n bytes or raises."""
    header = decode_header(read_exact(HEADER_BYTES))
    body = read_exact(header.body_length) if header.body_length else b""
    return Frame(header.opcode, header.request_id, decode_body(header, body), header.flags)


MAX_ECHO_CHARS = 64


def echo(text: str) -> str:
    """A client's text as an error message may repeat it: cut, so that the error always fits a frame."""
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


def error_body(
    code: str, message: str, *, retryable: bool, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The body of an error reply: code, message and retryable first, then the code's details."""
    body: dict[str, Any] = {"code": code, "message": message, "retryable": retryable}
    for key, value in (details or {}).items():
        if key not in body:
            body[key] = value
    return body


def new_nonce() -> str:
    """A fresh HELLO nonce, hex-encoded."""
    return secrets.token_hex(NONCE_BYTES)


def parse_nonce(value: object) -> bytes:
    """The raw bytes of a hex nonce from a HELLO body; ``ProtocolError`` if it is malformed.

    Checked against the exact spelling (``bytes.fromhex`` alone also takes upper case and spaces, so
    64 characters could carry fewer than 32 bytes)."""
    if not isinstance(value, str) or not _NONCE_HEX.fullmatch(value):
        raise ProtocolError(f"a nonce is {2 * NONCE_BYTES} lower-case hex digits", code=BAD_REQUEST)
    return bytes.fromhex(value)


def hello_proof(secret: bytes, tag: bytes, server_nonce: bytes, client_nonce: bytes) -> str:
    """HMAC-SHA256(secret, tag || server nonce || client nonce), hex; the tag says which side proves."""
    return hmac.new(secret, tag + server_nonce + client_nonce, hashlib.sha256).hexdigest()


def proof_matches(expected: str, received: object) -> bool:
    """Constant-time comparison of a received proof with the expected one."""
    if not isinstance(received, str):
        return False
    return hmac.compare_digest(expected.encode("ascii"), received.encode("utf-8", "replace"))
