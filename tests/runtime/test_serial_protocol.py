"""Serial protocol: CRC, COBS, message round trips, and a fuzzed streaming decoder."""
from __future__ import annotations

import binascii
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtm_runtime import serial_framing as sf, serial_messages as sm, serial_protocol as sp

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------ CRC, COBS
def test_crc_check_value() -> None:
    assert sf.crc16_ccitt_false(b"123456789") == 0x29B1
    assert sf.crc16_ccitt_false(b"") == 0xFFFF


@FAST
@given(st.binary(max_size=600))
def test_crc_matches_independent_implementation(data: bytes) -> None:
    # binascii.crc_hqx is CRC-CCITT with a caller-chosen init: a second, independent opinion.
    assert sf.crc16_ccitt_false(data) == binascii.crc_hqx(data, 0xFFFF)
    # Incremental use gives the same result.
    k = len(data) // 2
    assert sf.crc16_ccitt_false(data[k:], sf.crc16_ccitt_false(data[:k])) == sf.crc16_ccitt_false(data)


@pytest.mark.parametrize("raw, enc", [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
])
def test_cobs_published_vectors(raw: bytes, enc: bytes) -> None:
    assert sf.cobs_encode(raw) == enc
    assert sf.cobs_decode(enc) == raw


@FAST
@given(st.one_of(st.binary(max_size=1200),
                 st.lists(st.sampled_from([0, 1, 255]), max_size=800).map(bytes)))
def test_cobs_round_trip(data: bytes) -> None:
    enc = sf.cobs_encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= len(data) + len(data) // 254 + 1
    assert sf.cobs_decode(enc) == data


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x05\x01\x02", b"\x03\x01\x00"])
def test_cobs_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(sf.CobsError):
        sf.cobs_decode(bad)


# ------------------------------------------------------------------------------------ messages
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@FAST
@given(seq=st.integers(0, 65535), ts=st.integers(0, 2**64 - 1),
       vals=st.lists(finite32, max_size=sm.MAX_STATE_VALUES))
def test_state_round_trip(seq: int, ts: int, vals: list[float]) -> None:
    wire = sm.encode_state(seq, ts, vals)
    assert wire.endswith(b"\x00") and b"\x00" not in wire[:-1]
    assert len(wire) <= sf.MAX_ENCODED + 1
    msg = sm.decode_frame(wire)
    assert isinstance(msg, sm.State) and msg.seq == seq and msg.timestamp_us == ts
    np.testing.assert_array_equal(msg.values, np.asarray(vals, np.float32))


@FAST
@given(seq=st.integers(0, 65535), vals=st.lists(finite32, max_size=sm.MAX_COMMAND_VALUES))
def test_command_round_trip(seq: int, vals: list[float]) -> None:
    msg = sm.decode_frame(sm.encode_command(seq, vals))
    assert isinstance(msg, sm.Command) and msg.seq == seq
    np.testing.assert_array_equal(msg.values, np.asarray(vals, np.float32))


@FAST
@given(seq=st.integers(0, 65535), status=st.sampled_from(list(sm.DeviceStatus)),
       up=st.integers(0, 2**32 - 1))
def test_heartbeat_round_trip(seq: int, status: int, up: int) -> None:
    assert sm.decode_frame(sm.encode_heartbeat(seq, status, up)) == sm.Heartbeat(seq, status, up)


@FAST
@given(seq=st.integers(0, 65535), code=st.integers(0, 0xFFFF), text=st.text(max_size=80))
def test_fault_round_trip(seq: int, code: int, text: str) -> None:
    msg = sm.decode_frame(sm.encode_fault(seq, code, text))
    assert isinstance(msg, sm.Fault) and msg.seq == seq and msg.code == code
    assert len(msg.text.encode()) <= sm.MAX_FAULT_TEXT
    assert text.startswith(msg.text)


def test_encode_generic_and_limits() -> None:
    for m in [sm.Heartbeat(1, 0, 7), sm.Fault(2, sm.FaultCode.HEARTBEAT_TIMEOUT, "x")]:
        assert sm.decode_frame(sm.encode(m)) == m
    with pytest.raises(sf.ProtocolError):
        sm.encode_state(0, 0, np.zeros(sm.MAX_STATE_VALUES + 1))
    with pytest.raises(sf.ProtocolError):
        sm.encode_command(70000, [1.0])
    with pytest.raises(TypeError):
        sm.encode("nope")  # type: ignore[arg-type]


def test_documented_example_frame() -> None:
    """The hex example in docs/serial_protocol.md."""
    wire = sm.encode_command(0x0102, [0.5, -1.0])
    assert wire.hex(" ") == "05 12 02 01 02 01 01 02 3f 01 05 80 bf 69 98 00"
    hb = sm.encode_heartbeat(7, sm.DeviceStatus.OK, 1000)
    assert hb.hex(" ") == "03 13 07 01 03 e8 03 01 03 c2 85 00"


def test_seq_diff_wraps() -> None:
    assert sp.seq_diff(0, 65535) == 1
    assert sp.seq_diff(65535, 0) == -1
    assert sp.seq_diff(5, 5) == 0
    assert sp.seq_diff(100, 65500) == 136
    s = sp.Sequencer(65534)
    assert [s.next() for _ in range(4)] == [65534, 65535, 0, 1]


# ------------------------------------------------------------------------------------ decoder
def _frames(n: int, start: int = 0) -> list[bytes]:
    return [sm.encode_state((start + i) % 65536, i, [float(i), -float(i)]) for i in range(n)]


def test_decoder_arbitrary_chunking() -> None:
    stream = b"".join(_frames(50))
    rng = random.Random(1)
    dec = sp.FrameDecoder()
    out = []
    pos = 0
    while pos < len(stream):
        k = rng.randint(1, 40)
        out += dec.feed(stream[pos:pos + k])
        pos += k
    assert [m.seq for m in out] == list(range(50))
    assert dec.stats.frames_ok == 50 and dec.stats.corrupt == 0 and dec.buffered == 0


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_decoder_never_raises_and_is_bounded(chunks: list[bytes]) -> None:
    dec = sp.FrameDecoder()
    for c in chunks:
        msgs = dec.feed(c)
        assert all(isinstance(m, (sm.State, sm.Command, sm.Heartbeat, sm.Fault)) for m in msgs)
        assert dec.buffered <= sf.MAX_ENCODED


def test_decoder_garbage_without_delimiters_is_capped() -> None:
    dec = sp.FrameDecoder()
    for _ in range(200):  # 200 KiB of non-zero noise
        dec.feed(bytes(random.Random(0).randint(1, 255) for _ in range(1024)))
        assert dec.buffered <= sf.MAX_ENCODED
    assert dec.stats.oversize == 1  # one overlong "frame", discarded up to the next delimiter
    # The next delimiter ends the discard; a good frame after it is decoded.
    assert dec.feed(b"\x00" + sm.encode_heartbeat(3)) == [sm.Heartbeat(3, 0, 0)]


@settings(max_examples=200, deadline=None)
@given(garbage=st.lists(st.binary(max_size=200), min_size=6, max_size=6),
       seed=st.integers(0, 2**16))
def test_valid_frames_recovered_from_garbage(garbage: list[bytes], seed: int) -> None:
    """Frames between arbitrary garbage are all recovered when a delimiter precedes each one."""
    good = _frames(5, start=seed)
    stream = b""
    for g, f in zip(garbage, good):
        stream += g + b"\x00" + f
    stream += garbage[-1]
    dec = sp.FrameDecoder(check_seq=False)
    got = [m for m in dec.feed(stream) if isinstance(m, sm.State)]
    want = [sm.decode_frame(f) for f in good]
    # Garbage can, with probability ~2^-16 per frame, itself form a valid frame; require ours.
    got_keys = [(m.seq, m.timestamp_us) for m in got]
    for w in want:
        assert (w.seq, w.timestamp_us) in got_keys


def test_truncated_and_crc_bursts_counted() -> None:
    frames = _frames(6)
    dec = sp.FrameDecoder()
    stream = frames[0] + frames[1][:7] + b"\x00" + frames[2]  # truncated frame 1
    burst = bytearray(frames[3])
    for i in range(2, 6):  # a burst of bit errors that never creates a 0x00
        burst[i] = burst[i] ^ 0x10 or 0x01
    stream += bytes(burst) + frames[4] + frames[5]
    got = [m.seq for m in dec.feed(stream)]
    assert got == [0, 2, 4, 5]
    st_ = dec.stats
    assert st_.corrupt == 2 and st_.bad_cobs + st_.bad_crc + st_.bad_length == 2
    assert st_.seq_gaps == 2  # frames 1 and 3 never arrived intact


def test_bad_type_and_version_counted() -> None:
    def raw_frame(header: int, payload: bytes) -> bytes:
        body = bytes([header, 0, 0]) + payload
        body += sf.crc16_ccitt_false(body).to_bytes(2, "little")
        return sf.cobs_encode(body) + b"\x00"

    dec = sp.FrameDecoder()
    assert dec.feed(raw_frame(0x19, b"")) == []  # type 9
    assert dec.feed(raw_frame(0x23, b"\x00" * 5)) == []  # version 2
    assert dec.feed(raw_frame(0x13, b"\x00" * 4)) == []  # heartbeat 1 byte short
    assert dec.feed(raw_frame(0x11, b"\x00" * 8 + b"\x02" + b"\x00" * 4)) == []  # count 2, 1 value
    assert dec.stats.bad_type == 2 and dec.stats.bad_length == 2


def test_duplicates_and_out_of_order_dropped_with_wrap() -> None:
    f = {s: sm.encode_heartbeat(s) for s in [65533, 65534, 65535, 0, 1, 2]}
    dec = sp.FrameDecoder()
    order = [65533, 65534, 65534, 65535, 65533, 0, 1, 0, 2]
    got = [m.seq for c in order for m in dec.feed(f[c])]
    assert got == [65533, 65534, 65535, 0, 1, 2]
    assert dec.stats.duplicate == 1 and dec.stats.out_of_order == 2 and dec.stats.seq_gaps == 0


def test_sender_restart_resyncs() -> None:
    dec = sp.FrameDecoder(resync_after=4)
    dec.feed(b"".join(sm.encode_heartbeat(s) for s in range(1000, 1010)))
    got = [m.seq for m in dec.feed(b"".join(sm.encode_heartbeat(s) for s in range(0, 10)))]
    assert got == [4, 5, 6, 7, 8, 9]  # 0..3 dropped as old, then resync
    assert dec.stats.resyncs == 1 and dec.stats.out_of_order == 4
    dec.reset()  # an explicit reset (reconnect) accepts anything next
    assert [m.seq for m in dec.feed(sm.encode_heartbeat(0))] == [0]


def test_decode_throughput() -> None:
    """Not a benchmark gate: a sanity floor so a quadratic regression shows up."""
    import time
    stream = b"".join(sm.encode_state(i % 65536, i, np.arange(10, dtype=np.float32))
                      for i in range(2000))
    dec = sp.FrameDecoder()
    t0 = time.perf_counter()
    n = sum(len(dec.feed(stream[i:i + 512])) for i in range(0, len(stream), 512))
    dt = time.perf_counter() - t0
    assert n == 2000
    assert n / dt > 2000, f"decode rate {n / dt:.0f} frames/s"
