"""Protocol v1 codec: golden vectors in both directions, strict decoding, a fuzzed decoder, error mapping."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vms_adapter import protocol
from vms_adapter.errors import (
    AuthenticationFailed,
    Conflict,
    JournalError,
    JournalUnavailable,
    ProtocolError,
    Rejected,
    error_from_reply,
)
from vms_adapter.protocol import Opcode
from vms_adapter.server import wal_format as fmt
from vms_adapter.server.model import Record

VECTORS = json.loads(
    (Path(protocol.__file__).parent / "testdata" / "vectors.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_golden_frame_encodes_to_the_recorded_bytes(vector: dict[str, Any]) -> None:
    frame = vector["frame"]
    data = protocol.encode_frame(
        Opcode[frame["opcode"]], frame["requestId"], frame["body"], flags=frame["flags"]
    )
    assert data.hex() == vector["hex"]


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_golden_bytes_decode_to_the_recorded_frame(vector: dict[str, Any]) -> None:
    decoded = protocol.decode_frame(bytes.fromhex(vector["hex"]))
    frame = vector["frame"]
    assert (decoded.opcode, decoded.flags, decoded.request_id) == (
        Opcode[frame["opcode"]],
        frame["flags"],
        frame["requestId"],
    )
    assert decoded.body == frame["body"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_golden_frames_are_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode_frame(bytes.fromhex(vector["hex"]))


def test_hello_vectors_carry_proofs_computed_from_the_documented_secret() -> None:
    frames = {v["name"]: v["frame"]["body"] for v in VECTORS["valid"]}
    secret = VECTORS["helloSecret"].encode()
    server_nonce = bytes.fromhex(frames["hello-greeting"]["nonce"])
    client_nonce = bytes.fromhex(frames["hello-request"]["nonce"])
    client = protocol.hello_proof(secret, protocol.CLIENT_PROOF_TAG, server_nonce, client_nonce)
    server = protocol.hello_proof(secret, protocol.SERVER_PROOF_TAG, server_nonce, client_nonce)
    assert protocol.proof_matches(client, frames["hello-request"]["proof"])
    assert protocol.proof_matches(server, frames["hello-reply"]["proof"])
    assert client != server, "the two directions must not be interchangeable"
    assert not protocol.proof_matches(client, "0" * 64)
    assert not protocol.proof_matches(client, None)


@pytest.mark.parametrize(
    "nonce",
    ["00 " * 20 + "0000", "AB" * 32, "ab" * 31, "ab" * 33, "+0" * 32, None, 7],
    ids=["spaces-make-22-bytes", "upper-case", "short", "long", "sign", "null", "number"],
)
def test_a_nonce_that_is_not_64_lower_case_hex_digits_is_refused(nonce: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_nonce(nonce)
    assert caught.value.code == "BAD_REQUEST"


def test_a_well_formed_nonce_gives_its_32_bytes() -> None:
    nonce = protocol.new_nonce()
    assert protocol.parse_nonce(nonce) == bytes.fromhex(nonce)
    assert len(protocol.parse_nonce(nonce)) == protocol.NONCE_BYTES


def test_header_layout_is_eighteen_big_endian_bytes() -> None:
    data = protocol.encode_frame(Opcode.PING, 0x01020304, {}, flags=protocol.FLAG_REPLY)
    assert data[:2] == b"XJ"
    assert struct.unpack(">BBHIII", data[2:18]) == (1, Opcode.PING, 1, 0x01020304, 2, zlib.crc32(b"{}"))
    assert data[18:] == b"{}"


def test_a_body_over_the_limit_cannot_be_encoded() -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.encode_frame(Opcode.COMMIT, 1, {"pad": "x" * protocol.MAX_BODY_BYTES})
    assert caught.value.code == "TOO_LARGE"


def test_a_body_at_the_limit_round_trips() -> None:
    body = {"pad": "x" * (protocol.MAX_BODY_BYTES - len('{"pad":""}'))}
    data = protocol.encode_frame(Opcode.COMMIT, 1, body)
    assert len(data) == protocol.HEADER_BYTES + protocol.MAX_BODY_BYTES
    assert protocol.decode_frame(data).body == body


def test_deeply_nested_json_is_a_protocol_error_not_a_crash() -> None:
    body = b"[" * 20_000 + b"]" * 20_000
    header = struct.pack(">2sBBHIII", b"XJ", 1, 2, 0, 1, len(body), zlib.crc32(body))
    with pytest.raises(ProtocolError):
        protocol.decode_frame(header + body)


def _read_exact_from(data: bytes) -> Any:
    stream = io.BytesIO(data)

    def read_exact(count: int) -> bytes:
        chunk = stream.read(count)
        if len(chunk) != count:
            raise ProtocolError("stream ended")
        return chunk

    return read_exact


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_cleanly_or_raise_protocol_error(data: bytes) -> None:
    for candidate in (data, b"XJ\x01" + data):
        try:
            frame = protocol.decode_frame(candidate)
        except ProtocolError:
            continue
        assert isinstance(frame.body, dict)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(str.encode),
        # Almost-valid bodies: any JSON (NaN and Infinity included), sometimes with a key repeated.
        st.tuples(_JSON_VALUES, st.booleans()).map(
            lambda v: (json.dumps(v[0]) if not v[1] else '{"a":1,"a":' + json.dumps(v[0]) + "}").encode()
        ),
    )
)
def test_any_body_behind_a_correct_header_and_crc_decodes_to_an_object_or_a_protocol_error(
    body: bytes,
) -> None:
    """Random bytes almost never pass the magic and the CRC-32; this reaches the UTF-8 and JSON checks."""
    if len(body) > protocol.MAX_BODY_BYTES:
        return
    try:
        frame = protocol.decode_frame(protocol.frame_with_body(Opcode.COMMIT, 7, body))
    except ProtocolError:
        return
    assert isinstance(frame.body, dict)
    assert protocol.encode_body(frame.body)  # what was accepted is strict JSON: it encodes again


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, 3),
    st.integers(0, 2**32 - 1),
    st.dictionaries(
        st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=20)), max_size=5
    ),
    st.integers(0, 400),
    st.integers(0, 255),
)
def test_any_single_byte_change_of_a_valid_frame_is_detected_or_harmless(
    opcode: int, flags: int, request_id: int, body: dict[str, Any], position: int, value: int
) -> None:
    data = bytearray(protocol.encode_frame(opcode, request_id, body, flags=flags))
    assert protocol.decode_frame(bytes(data)).body == body
    position %= len(data)
    changed = data[position] != value
    data[position] = value
    try:
        frame = protocol.read_frame(_read_exact_from(bytes(data)))
    except ProtocolError:
        return
    if changed and position >= 6:
        # Only the request id, opcode or flag bits can change undetected (no CRC covers the header).
        assert position < 10 or frame.body == body


@pytest.mark.parametrize(
    ("body", "kind", "code"),
    [
        ({"code": "CONFLICT", "message": "m", "retryable": False, "currentVersion": 3}, Conflict, "CONFLICT"),
        ({"code": "UNAVAILABLE", "message": "m", "retryable": True}, JournalUnavailable, "UNAVAILABLE"),
        ({"code": "OVERLOADED", "message": "m", "retryable": True}, JournalUnavailable, "OVERLOADED"),
        ({"code": "UNAUTHORIZED", "message": "m", "retryable": False}, AuthenticationFailed, "UNAUTHORIZED"),
        ({"code": "INVALID_TRANSITION", "message": "m", "retryable": False}, Rejected, "INVALID_TRANSITION"),
        ({"code": "NOT_FOUND", "message": "m", "retryable": False}, Rejected, "NOT_FOUND"),
        (
            {"code": "UNKNOWN_OPERATION", "message": "m", "retryable": False},
            ProtocolError,
            "UNKNOWN_OPERATION",
        ),
        ({"code": "INTERNAL", "message": "m", "retryable": False}, JournalError, "INTERNAL"),
    ],
)
def test_error_replies_map_to_one_typed_exception_each(body: dict[str, Any], kind: type, code: str) -> None:
    error = error_from_reply(body)
    assert type(error) is kind
    assert error.code == code
    assert error.retryable is body["retryable"]


def test_conflict_carries_the_current_version() -> None:
    error = error_from_reply({"code": "CONFLICT", "message": "m", "retryable": False, "currentVersion": 7})
    assert isinstance(error, Conflict)
    assert error.current_version == 7
    assert isinstance(AuthenticationFailed("x"), Rejected)


_FINITE_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _FINITE_JSON, max_size=6), st.text(max_size=20) | st.none())
def test_a_reply_encoded_once_gives_the_bytes_encoding_it_twice_gives(
    reply: dict[str, Any], key: Any
) -> None:
    """The service encodes a COMMIT reply once, splices the text into its commit marker and sends the same
    bytes as the reply's body: both must be exactly what encoding each on its own gives."""
    record = Record(1, "j-00000001", "x-a", {}, 0.0)
    marker = fmt.commit_marker([record], b"", time=1.5, key=key, new_job=None)
    text = fmt.encode_json(reply)
    assert fmt.encode_marker(marker, text) == fmt.encode_entry(fmt.KIND_COMMIT, {**marker, "reply": reply})
    encoded = protocol.EncodedBody(reply, text.encode())
    assert encoded == reply
    assert protocol.encode_frame(Opcode.COMMIT, 3, encoded) == protocol.encode_frame(Opcode.COMMIT, 3, reply)


def test_an_encoded_body_over_the_limit_is_refused_like_any_other() -> None:
    big = {"pad": "x" * protocol.MAX_BODY_BYTES}
    with pytest.raises(ProtocolError) as plain:
        protocol.encode_body(big)
    with pytest.raises(ProtocolError) as encoded:
        protocol.encode_body(protocol.EncodedBody(big, fmt.encode_json(big).encode()))
    assert encoded.value.code == plain.value.code == "TOO_LARGE"
