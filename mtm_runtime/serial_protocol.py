"""Binary serial protocol between the host (ROS bridge) and a microcontroller.

Spec for firmware authors: ``docs/serial_protocol.md``. No ROS import here (numpy only).

Wire format (all integers little-endian)::

    raw frame  = header(1) | seq(2, uint16) | payload(n) | crc(2, uint16)
    on the wire = COBS(raw frame) | 0x00

* ``header``: high nibble = protocol version (``VERSION``), low nibble = message type.
* ``seq``: per-sender counter, +1 (mod 65536) on every frame that sender emits, all types share it.
* ``crc``: CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0) over
  header+seq+payload; check value for ``b"123456789"`` is 0x29B1.

Invariants
* A raw frame is at most ``MAX_FRAME`` (1024) bytes; its COBS form at most ``MAX_ENCODED``.
* ``FrameDecoder`` never raises on input bytes and never holds more than ``MAX_ENCODED`` bytes
  of a partial frame, whatever it is fed.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field, fields
from typing import Iterator, Sequence, Union

import numpy as np

VERSION = 1
MAX_FRAME = 1024  # bytes of a raw (un-stuffed) frame, header..crc inclusive
HEADER_LEN = 3  # header byte + uint16 seq
CRC_LEN = 2
# COBS adds one byte per started 254-byte block, plus one.
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1
MAX_PAYLOAD = MAX_FRAME - HEADER_LEN - CRC_LEN
MAX_FAULT_TEXT = 64  # bytes of UTF-8
SEQ_MOD = 1 << 16
SEQ_HALF = 1 << 15


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


class ProtocolError(ValueError):
    """A frame that cannot be encoded or decoded (the decoder catches these and counts them)."""


class CobsError(ProtocolError):
    """Malformed COBS block structure."""


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
# Messages
# ---------------------------------------------------------------------------------------------
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
_HEAD = struct.Struct("<BH")
_CRC = struct.Struct("<H")
MAX_STATE_VALUES = min(255, (MAX_PAYLOAD - _STATE_HEAD.size) // 4)  # 252 with MAX_FRAME=1024
MAX_COMMAND_VALUES = min(255, (MAX_PAYLOAD - _COUNT.size) // 4)


def _frame(msg_type: MsgType, seq: int, payload: bytes) -> bytes:
    """Build header+payload+CRC, COBS-encode it and append the 0x00 delimiter."""
    if not 0 <= seq < SEQ_MOD:
        raise ProtocolError(f"seq {seq} outside uint16")
    raw = _HEAD.pack((VERSION << 4) | int(msg_type), seq) + payload
    if len(raw) + CRC_LEN > MAX_FRAME:
        raise ProtocolError(f"frame of {len(raw) + CRC_LEN} bytes exceeds {MAX_FRAME}")
    raw += _CRC.pack(crc16_ccitt_false(raw))
    return cobs_encode(raw) + b"\x00"


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
    return _frame(MsgType.STATE, seq, _STATE_HEAD.pack(timestamp_us, v.size) + v.tobytes())


def encode_command(seq: int, values: Sequence[float] | np.ndarray) -> bytes:
    """Wire bytes of a COMMAND frame (values cast to float32; the host checks finiteness)."""
    return _frame(MsgType.COMMAND, seq, _vector(values, MAX_COMMAND_VALUES))


def encode_heartbeat(seq: int, status: int = DeviceStatus.OK, uptime_ms: int = 0) -> bytes:
    """Wire bytes of a HEARTBEAT frame (``uptime_ms`` taken mod 2**32)."""
    return _frame(MsgType.HEARTBEAT, seq, _HEARTBEAT.pack(int(status) & 0xFF,
                                                          int(uptime_ms) & 0xFFFFFFFF))


def encode_fault(seq: int, code: int, text: str = "") -> bytes:
    """Wire bytes of a FAULT frame; ``text`` is UTF-8, truncated to ``MAX_FAULT_TEXT`` bytes."""
    raw = text.encode("utf-8")[:MAX_FAULT_TEXT]
    # Never cut a multi-byte character in half.
    raw = raw.decode("utf-8", errors="ignore").encode("utf-8")
    return _frame(MsgType.FAULT, seq, _FAULT_HEAD.pack(int(code) & 0xFFFF, len(raw)) + raw)


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


class LengthError(ProtocolError):
    """Payload length inconsistent with the message type."""


class TypeCodeError(ProtocolError):
    """Unknown version or message type."""


class CrcError(ProtocolError):
    """CRC mismatch."""


def parse_frame(raw: bytes) -> Message:
    """Parse one un-stuffed frame (header..crc). Raises a ``ProtocolError`` subclass."""
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
    payload = body[HEADER_LEN:]
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


# ---------------------------------------------------------------------------------------------
# Sequence numbers
# ---------------------------------------------------------------------------------------------
def seq_diff(new: int, last: int) -> int:
    """Signed distance ``new - last`` on the uint16 circle, in [-32768, 32767]."""
    d = (new - last) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_HALF else d


class Sequencer:
    """Send-side uint16 counter: ``next()`` returns 0, 1, ..., 65535, 0, ..."""

    def __init__(self, start: int = 0) -> None:
        self._next = start % SEQ_MOD

    def next(self) -> int:
        s = self._next
        self._next = (s + 1) % SEQ_MOD
        return s


# ---------------------------------------------------------------------------------------------
# Streaming decoder
# ---------------------------------------------------------------------------------------------
@dataclass
class DecoderStats:
    """Counters of a ``FrameDecoder`` (monotonic, reset only by ``FrameDecoder.reset_stats``)."""

    bytes_in: int = 0
    frames_ok: int = 0
    bad_cobs: int = 0
    bad_crc: int = 0
    bad_length: int = 0  # payload inconsistent with its type, or frame shorter than header+crc
    bad_type: int = 0  # unknown version or message type
    oversize: int = 0  # more than MAX_ENCODED bytes without a delimiter
    duplicate: int = 0  # same seq as the last accepted frame
    out_of_order: int = 0  # older than the last accepted frame
    seq_gaps: int = 0  # frames missing between accepted ones (lost on the wire)
    resyncs: int = 0  # sequence tracking restarted after a run of "old" frames

    @property
    def corrupt(self) -> int:
        """All frames dropped for their content (not for their sequence number)."""
        return self.bad_cobs + self.bad_crc + self.bad_length + self.bad_type + self.oversize

    def as_dict(self) -> dict[str, int]:
        d = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        d["corrupt"] = self.corrupt
        return d


@dataclass
class FrameDecoder:
    """Streaming decoder: ``feed(chunk)`` -> list of accepted messages, in arrival order.

    Bytes are split at 0x00. Each frame is un-stuffed, CRC-checked and parsed; failures are
    counted in ``stats`` and dropped. Sequence policy (``check_seq``): a frame is accepted when
    its seq is ahead of the last accepted one on the uint16 circle (distance 1..32767; a
    distance > 1 counts the missing frames in ``seq_gaps``); distance 0 is a duplicate and
    negative distances are out-of-order; both are dropped. After ``resync_after`` consecutive
    out-of-order frames (a rebooted sender restarting at 0) the decoder accepts the next one
    and counts a resync. Memory: a partial frame longer than ``MAX_ENCODED`` bytes is discarded
    up to the next delimiter, so the buffer never exceeds ``MAX_ENCODED`` bytes.
    """

    check_seq: bool = True
    resync_after: int = 8
    max_encoded: int = MAX_ENCODED
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray, init=False, repr=False)
    _discarding: bool = field(default=False, init=False, repr=False)
    _last_seq: int | None = field(default=None, init=False, repr=False)
    _old_run: int = field(default=0, init=False, repr=False)

    @property
    def buffered(self) -> int:
        """Bytes of the current partial frame held in memory (<= ``max_encoded``)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget the partial frame and the sequence history (call after a reconnect)."""
        self._buf.clear()
        self._discarding = False
        self._last_seq = None
        self._old_run = 0

    def reset_stats(self) -> None:
        self.stats = DecoderStats()

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Message]:
        """Consume any bytes; return the messages completed by them. Never raises."""
        return list(self.iter_feed(chunk))

    def iter_feed(self, chunk: bytes | bytearray | memoryview) -> Iterator[Message]:
        data = bytes(chunk)
        self.stats.bytes_in += len(data)
        pos, n = 0, len(data)
        while pos < n:
            z = data.find(b"\x00", pos)
            if z < 0:
                self._append(data[pos:])
                return
            self._append(data[pos:z])
            pos = z + 1
            if self._discarding:
                self._discarding = False
                continue
            if not self._buf:
                continue  # empty frame (repeated delimiter): allowed filler
            frame = bytes(self._buf)
            self._buf.clear()
            msg = self._decode_one(frame)
            if msg is not None:
                yield msg

    def _append(self, part: bytes) -> None:
        if self._discarding or not part:
            return
        if len(self._buf) + len(part) > self.max_encoded:
            self._buf.clear()
            self._discarding = True
            self.stats.oversize += 1
            return
        self._buf += part

    def _decode_one(self, frame: bytes) -> Message | None:
        s = self.stats
        try:
            msg = parse_frame(cobs_decode(frame))
        except CobsError:
            s.bad_cobs += 1
            return None
        except CrcError:
            s.bad_crc += 1
            return None
        except TypeCodeError:
            s.bad_type += 1
            return None
        except ProtocolError:
            s.bad_length += 1
            return None
        if self.check_seq and not self._accept_seq(msg.seq):
            return None
        s.frames_ok += 1
        return msg

    def _accept_seq(self, seq: int) -> bool:
        s = self.stats
        if self._last_seq is None:
            self._last_seq = seq
            return True
        d = seq_diff(seq, self._last_seq)
        if d > 0:
            s.seq_gaps += d - 1
            self._last_seq = seq
            self._old_run = 0
            return True
        if d == 0:
            s.duplicate += 1  # duplicates never trigger a resync
            return False
        if self._old_run >= self.resync_after:
            s.resyncs += 1
            self._last_seq = seq
            self._old_run = 0
            return True
        s.out_of_order += 1
        self._old_run += 1
        return False
