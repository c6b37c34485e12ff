"""Framing of the serial protocol: header, CRC, COBS, and what can be wrong with a frame.

Spec for firmware authors: ``docs/serial_protocol.md``. The messages inside a frame are
``mtm_runtime.serial_messages``; the streaming decoder is ``mtm_runtime.serial_protocol``.

Wire format (all integers little-endian)::

    raw frame  = header(1) | seq(2, uint16) | payload(n) | crc(2, uint16)
    on the wire = COBS(raw frame) | 0x00

* ``header``: high nibble = protocol version (``VERSION``), low nibble = message type.
* ``seq``: per-sender counter, +1 (mod 65536) on every frame that sender emits, all types share it.
* ``crc``: CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0) over
  header+seq+payload; check value for ``b"123456789"`` is 0x29B1.

A raw frame is at most ``MAX_FRAME`` (1024) bytes; its COBS form at most ``MAX_ENCODED``.
"""
from __future__ import annotations

import struct

VERSION = 1
MAX_FRAME = 1024  # bytes of a raw (un-stuffed) frame, header..crc inclusive
HEADER_LEN = 3  # header byte + uint16 seq
CRC_LEN = 2
# COBS adds one byte per started 254-byte block, plus one.
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1
MAX_PAYLOAD = MAX_FRAME - HEADER_LEN - CRC_LEN
SEQ_MOD = 1 << 16
SEQ_HALF = 1 << 15

_HEAD = struct.Struct("<BH")  # header byte, seq
_CRC = struct.Struct("<H")


class ProtocolError(ValueError):
    """A frame that cannot be encoded or decoded (the decoder catches these and counts them)."""


class CobsError(ProtocolError):
    """Malformed COBS block structure."""


class LengthError(ProtocolError):
    """Payload length inconsistent with the message type."""


class TypeCodeError(ProtocolError):
    """Unknown version or message type."""


class CrcError(ProtocolError):
    """CRC mismatch."""


# ---------------------------------------------------------------------------------------------
# CRC-16/CCITT-FALSE
# ---------------------------------------------------------------------------------------------
def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc16_ccitt_false(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (pass a previous result as ``crc`` to continue)."""
    table = _CRC_TABLE
    for b in bytes(data):
        crc = ((crc << 8) & 0xFF00) ^ table[(crc >> 8) ^ b]
    return crc


# ---------------------------------------------------------------------------------------------
# COBS (Consistent Overhead Byte Stuffing)
# ---------------------------------------------------------------------------------------------
def cobs_encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``: the result contains no 0x00 byte (the delimiter is not appended).

    Canonical form: a final block of exactly 254 non-zero bytes is not followed by ``0x01``.
    """
    data = bytes(data)
    out = bytearray()
    segments = data.split(b"\x00")
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        pos = 0
        # Full 254-byte blocks (code 0xFF: no implied zero after them).
        while len(seg) - pos >= 254:
            out.append(0xFF)
            out += seg[pos:pos + 254]
            pos += 254
        rest = seg[pos:]
        if rest or pos == 0 or i != last:
            # Final short block of this segment; its implied zero is the split point
            # (or, for the last segment, the frame end, where the zero is dropped).
            out.append(len(rest) + 1)
            out += rest
    return bytes(out)


def cobs_decode(data: bytes | bytearray | memoryview) -> bytes:
    """Invert ``cobs_encode``; raises ``CobsError`` on a zero byte or a block past the end."""
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise CobsError("empty COBS frame")
    out = bytearray()
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte inside COBS frame at offset {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS block at offset {i} (code {code}) runs past frame end ({n})")
        block = data[i + 1:end]
        if 0 in block:
            raise CobsError("zero byte inside COBS block")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------
def frame(type_code: int, seq: int, payload: bytes) -> bytes:
    """Build header+payload+CRC, COBS-encode it and append the 0x00 delimiter."""
    if not 0 <= seq < SEQ_MOD:
        raise ProtocolError(f"seq {seq} outside uint16")
    raw = _HEAD.pack((VERSION << 4) | int(type_code), seq) + payload
    if len(raw) + CRC_LEN > MAX_FRAME:
        raise ProtocolError(f"frame of {len(raw) + CRC_LEN} bytes exceeds {MAX_FRAME}")
    raw += _CRC.pack(crc16_ccitt_false(raw))
    return cobs_encode(raw) + b"\x00"


def unframe(raw: bytes) -> tuple[int, int, bytes]:
    """Check one un-stuffed frame (header..crc): length, CRC and version. Returns (message type
    code, seq, payload); raises ``LengthError``, ``CrcError`` or ``TypeCodeError``."""
    if len(raw) < HEADER_LEN + CRC_LEN:
        raise LengthError(f"frame of {len(raw)} bytes is shorter than header+crc")
    if len(raw) > MAX_FRAME:
        raise LengthError(f"frame of {len(raw)} bytes exceeds {MAX_FRAME}")
    body, (crc,) = raw[:-CRC_LEN], _CRC.unpack_from(raw, len(raw) - CRC_LEN)
    if crc16_ccitt_false(body) != crc:
        raise CrcError("CRC mismatch")
    header, seq = _HEAD.unpack_from(body, 0)
    version, code = header >> 4, header & 0x0F
    if version != VERSION:
        raise TypeCodeError(f"protocol version {version}, expected {VERSION}")
    return code, seq, body[HEADER_LEN:]


__all__ = ["VERSION", "MAX_FRAME", "HEADER_LEN", "CRC_LEN", "MAX_ENCODED", "MAX_PAYLOAD", "SEQ_MOD", "SEQ_HALF",
           "ProtocolError", "CobsError", "LengthError", "TypeCodeError", "CrcError", "crc16_ccitt_false",
           "cobs_encode", "cobs_decode", "frame", "unframe"]
