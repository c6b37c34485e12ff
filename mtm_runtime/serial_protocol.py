"""Binary serial protocol between the host (ROS bridge) and a microcontroller: the stream.

Spec for firmware authors: ``docs/serial_protocol.md``. No ROS import here (numpy only). The
protocol has three parts, lowest first:

* ``mtm_runtime.serial_framing``: the frame (header, uint16 seq, CRC-16/CCITT-FALSE, COBS with a
  0x00 delimiter), its size limits and the ``ProtocolError`` family;
* ``mtm_runtime.serial_messages``: the message types (STATE, COMMAND, HEARTBEAT, FAULT), their
  payloads, ``encode_*`` and ``decode_frame`` for one frame;
* this module: a byte stream in both directions: ``Sequencer`` numbers the frames a sender
  emits, ``FrameDecoder`` splits received bytes into frames, decodes them and applies the
  sequence policy, counting every drop in ``DecoderStats``.

Invariant: ``FrameDecoder`` never raises on input bytes and never holds more than
``MAX_ENCODED`` bytes of a partial frame, whatever it is fed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Iterator

from mtm_runtime.serial_framing import (MAX_ENCODED, SEQ_HALF, SEQ_MOD, CobsError, CrcError, ProtocolError,
                                        TypeCodeError, cobs_decode)
from mtm_runtime.serial_messages import Message, parse_frame


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


__all__ = ["seq_diff", "Sequencer", "DecoderStats", "FrameDecoder"]
