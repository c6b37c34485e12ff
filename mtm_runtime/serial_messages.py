"""Messages of the serial protocol: their types, payloads, and one frame <-> one message.

Spec for firmware authors: ``docs/serial_protocol.md``. Each message travels in one frame
(header, seq, payload, CRC, COBS: ``mtm_runtime.serial_framing``); a byte stream is decoded by
``mtm_runtime.serial_protocol.FrameDecoder``. Payloads (little-endian)::

    STATE      timestamp_us(8, uint64) | count(1) | count x float32
    COMMAND    count(1) | count x float32
    HEARTBEAT  status(1) | uptime_ms(4, uint32)
    FAULT      code(2, uint16) | text length(1) | UTF-8 text (<= MAX_FAULT_TEXT bytes)
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from mtm_runtime.serial_framing import MAX_PAYLOAD, LengthError, ProtocolError, TypeCodeError, cobs_decode, frame, unframe

MAX_FAULT_TEXT = 64  # bytes of UTF-8


class MsgType(enum.IntEnum):
    """Message type, the low nibble of the header byte."""

    STATE = 1  # device -> host
    COMMAND = 2  # host -> device
    HEARTBEAT = 3  # both directions
    FAULT = 4  # device -> host (a host may send one too; devices may ignore it)


class DeviceStatus(enum.IntEnum):
    """``status`` field of a HEARTBEAT (the host sends ``OK``)."""

    OK = 0  # host heartbeat present, commands applied
    SAFE = 1  # no host heartbeat (yet / lost): actuators at zero, commands ignored
    FAULT = 2  # a latched device fault: actuators at zero


class FaultCode(enum.IntEnum):
    """``code`` field of a FAULT. 0x8000 and up are device-specific."""

    CLEARED = 0x0000  # previous fault condition is over, normal operation resumed
    HEARTBEAT_TIMEOUT = 0x0001  # host heartbeat lost: actuators zeroed
    COMMAND_WIDTH = 0x0002  # COMMAND had the wrong number of values: ignored
    COMMAND_NONFINITE = 0x0003  # COMMAND had NaN/Inf: ignored
    RX_CORRUPT = 0x0004  # device is receiving corrupt frames
    PHYSICS = 0x0010  # (simulator) physics diverged / reset
    INTERNAL = 0xFFFF


@dataclass(frozen=True)
class State:
    """Device state sample: ``values`` float32 [n]; ``timestamp_us`` on the device clock."""

    seq: int
    timestamp_us: int
    values: np.ndarray


@dataclass(frozen=True)
class Command:
    """Actuator command, float32 [n], in the actuator's units (device clips to its range)."""

    seq: int
    values: np.ndarray


@dataclass(frozen=True)
class Heartbeat:
    """Liveness + status: ``status`` a ``DeviceStatus``; ``uptime_ms`` sender uptime (wraps)."""

    seq: int
    status: int
    uptime_ms: int


@dataclass(frozen=True)
class Fault:
    """Device fault report: ``code`` a ``FaultCode`` (or device-specific), short UTF-8 text."""

    seq: int
    code: int
    text: str


Message = Union[State, Command, Heartbeat, Fault]

_STATE_HEAD = struct.Struct("<QB")  # timestamp_us, count
_COUNT = struct.Struct("<B")
_HEARTBEAT = struct.Struct("<BI")  # status, uptime_ms
_FAULT_HEAD = struct.Struct("<HB")  # code, text length
MAX_STATE_VALUES = min(255, (MAX_PAYLOAD - _STATE_HEAD.size) // 4)  # 252 with MAX_FRAME=1024
MAX_COMMAND_VALUES = min(255, (MAX_PAYLOAD - _COUNT.size) // 4)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------
def _vector(values: Sequence[float] | np.ndarray, cap: int) -> bytes:
    v = np.asarray(values, dtype="<f4").reshape(-1)
    if v.size > cap:
        raise ProtocolError(f"{v.size} values exceed the {cap}-value limit")
    return _COUNT.pack(v.size) + v.tobytes()


def encode_state(seq: int, timestamp_us: int, values: Sequence[float] | np.ndarray) -> bytes:
    """Wire bytes of a STATE frame (``timestamp_us`` uint64, values cast to float32)."""
    v = np.asarray(values, dtype="<f4").reshape(-1)
    if v.size > MAX_STATE_VALUES:
        raise ProtocolError(f"{v.size} state values exceed {MAX_STATE_VALUES}")
    if not 0 <= timestamp_us < (1 << 64):
        raise ProtocolError("timestamp_us outside uint64")
    return frame(MsgType.STATE, seq, _STATE_HEAD.pack(timestamp_us, v.size) + v.tobytes())


def encode_command(seq: int, values: Sequence[float] | np.ndarray) -> bytes:
    """Wire bytes of a COMMAND frame (values cast to float32; the host checks finiteness)."""
    return frame(MsgType.COMMAND, seq, _vector(values, MAX_COMMAND_VALUES))


def encode_heartbeat(seq: int, status: int = DeviceStatus.OK, uptime_ms: int = 0) -> bytes:
    """Wire bytes of a HEARTBEAT frame (``uptime_ms`` taken mod 2**32)."""
    return frame(MsgType.HEARTBEAT, seq, _HEARTBEAT.pack(int(status) & 0xFF,
                                                         int(uptime_ms) & 0xFFFFFFFF))


def encode_fault(seq: int, code: int, text: str = "") -> bytes:
    """Wire bytes of a FAULT frame; ``text`` is UTF-8, truncated to ``MAX_FAULT_TEXT`` bytes."""
    raw = text.encode("utf-8")[:MAX_FAULT_TEXT]
    # Never cut a multi-byte character in half.
    raw = raw.decode("utf-8", errors="ignore").encode("utf-8")
    return frame(MsgType.FAULT, seq, _FAULT_HEAD.pack(int(code) & 0xFFFF, len(raw)) + raw)


def encode(msg: Message) -> bytes:
    """Wire bytes of any message object (uses ``msg.seq``)."""
    if isinstance(msg, State):
        return encode_state(msg.seq, msg.timestamp_us, msg.values)
    if isinstance(msg, Command):
        return encode_command(msg.seq, msg.values)
    if isinstance(msg, Heartbeat):
        return encode_heartbeat(msg.seq, msg.status, msg.uptime_ms)
    if isinstance(msg, Fault):
        return encode_fault(msg.seq, msg.code, msg.text)
    raise TypeError(f"not a protocol message: {type(msg).__name__}")


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def parse_frame(raw: bytes) -> Message:
    """Parse one un-stuffed frame (header..crc). Raises a ``ProtocolError`` subclass."""
    code, seq, payload = unframe(raw)
    if code == MsgType.STATE:
        if len(payload) < _STATE_HEAD.size:
            raise LengthError("STATE payload too short")
        ts, n = _STATE_HEAD.unpack_from(payload, 0)
        if len(payload) != _STATE_HEAD.size + 4 * n:
            raise LengthError(f"STATE says {n} values, payload has {len(payload)} bytes")
        vals = np.frombuffer(payload, dtype="<f4", count=n, offset=_STATE_HEAD.size)
        return State(seq, ts, vals.astype(np.float32))
    if code == MsgType.COMMAND:
        if len(payload) < 1 or len(payload) != 1 + 4 * payload[0]:
            raise LengthError("COMMAND payload length does not match its count")
        vals = np.frombuffer(payload, dtype="<f4", count=payload[0], offset=1)
        return Command(seq, vals.astype(np.float32))
    if code == MsgType.HEARTBEAT:
        if len(payload) != _HEARTBEAT.size:
            raise LengthError(f"HEARTBEAT payload is {len(payload)} bytes, expected 5")
        status, uptime = _HEARTBEAT.unpack(payload)
        return Heartbeat(seq, status, uptime)
    if code == MsgType.FAULT:
        if len(payload) < _FAULT_HEAD.size:
            raise LengthError("FAULT payload too short")
        fcode, n = _FAULT_HEAD.unpack_from(payload, 0)
        if len(payload) != _FAULT_HEAD.size + n or n > MAX_FAULT_TEXT:
            raise LengthError("FAULT text length does not match")
        text = payload[_FAULT_HEAD.size:].decode("utf-8", errors="replace")
        return Fault(seq, fcode, text)
    raise TypeCodeError(f"unknown message type {code}")


def decode_frame(wire: bytes) -> Message:
    """Decode one COBS frame, with or without its trailing 0x00 (no sequence check)."""
    if wire.endswith(b"\x00"):
        wire = wire[:-1]
    return parse_frame(cobs_decode(wire))


__all__ = ["MAX_FAULT_TEXT", "MAX_STATE_VALUES", "MAX_COMMAND_VALUES", "MsgType", "DeviceStatus", "FaultCode",
           "State", "Command", "Heartbeat", "Fault", "Message", "encode_state", "encode_command", "encode_heartbeat",
           "encode_fault", "encode", "parse_frame", "decode_frame"]
