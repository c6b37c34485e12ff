"""MCAP recordings of the closed loop (rosbag2-compatible), without importing ROS.

Writing: :class:`McapSink` stores *serialized* CDR messages as received by a raw rclpy
subscription (what rosbag2 stores), under the ``ros2`` MCAP profile, each channel with a
``ros2msg`` schema: the message definition text plus its dependencies, concatenated the way
rosbag2 does (``====...`` separator lines and ``MSG: pkg/Type`` headers). The definitions are
read from the ``.msg`` files of the installed interface packages (``AMENT_PREFIX_PATH``, the
Python prefix, ``/opt/ros/*``), so ``mcap_ros2`` / Foxglove / ``ros2 bag`` can decode the file.

Reading: :func:`read_messages` decodes with ``mcap_ros2`` (pure Python; no rclpy needed), so
``mtm import-mcap`` and ``mtm compare-rollouts`` run on a machine without ROS.

Times: ``log_time`` is the time the recorder's DDS reader received the message and
``publish_time`` the publisher's DDS source timestamp (as rosbag2 stores them); where the rclpy
gives no message info (Humble) both are the time the recorder's callback ran. Int ns since the
UNIX epoch, on the host's realtime clock.

Loss accounting (what the recorder received and missed, written into the file as the metadata
record ``mtm_record``) is ``mtm_runtime.recording_loss``.
"""
from __future__ import annotations

import glob
import os
import re
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

#: Topics of the closed loop and their types (``pkg/msg/Type``); ``mtm record`` records these by default.
CLOSED_LOOP_TOPICS: dict[str, str] = {
    "/observation": "std_msgs/msg/Float64MultiArray",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/commands": "",            # Float64MultiArray or JointState (command_type): resolved from the graph
    "/reward": "std_msgs/msg/Float64",
    "/goal": "std_msgs/msg/Float64MultiArray",
    "/episode_stats": "std_msgs/msg/Float64MultiArray",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    # the world-model monitor's residual per plan, one value per state dim (policy node, monitor: true)
    "/model_residual": "std_msgs/msg/Float64MultiArray",
}
#: the monitor's residual topic (``CLOSED_LOOP_TOPICS``); ``mtm compare-rollouts`` reads it back
RESIDUAL_TOPIC = "/model_residual"

_SEPARATOR = "=" * 80
#: Primitive field types of the ROS 2 .msg language (everything else is a message type).
_PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
               "uint32", "int64", "uint64", "string", "wstring"}


class RecordingError(RuntimeError):
    """A recording cannot be written or read; the message names the file/topic/type."""


def _search_roots() -> list[Path]:
    roots = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    roots.append(Path(sys.prefix))
    roots += [Path(p) for p in sorted(glob.glob("/opt/ros/*"))]
    return roots


def _msg_file(type_name: str) -> Path:
    pkg, _, name = _split_type(type_name)
    for root in _search_roots():
        f = root / "share" / pkg / "msg" / f"{name}.msg"
        if f.is_file():
            return f
    raise RecordingError(f"no message definition for {type_name}: {pkg}/msg/{name}.msg not found under "
                         f"{', '.join(str(r / 'share') for r in _search_roots())}")


def _split_type(type_name: str) -> tuple[str, str, str]:
    """``pkg/msg/Name`` or ``pkg/Name`` -> (pkg, "msg", Name)."""
    parts = type_name.split("/")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return parts[0], "msg", parts[1]
    raise RecordingError(f"not a message type name: {type_name!r} (expected pkg/msg/Type)")


def _dependencies(pkg: str, text: str) -> list[str]:
    """Message types (``pkg/Name``) used by the fields of a .msg text, in order of appearance."""
    deps: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        ftype = line.split()[0]  # constants have primitive types, so they drop out below
        base = re.sub(r"\[.*\]$", "", ftype)
        base = re.sub(r"<=\d+$", "", base)
        if base in _PRIMITIVES:
            continue
        if base == "Header":
            base = "std_msgs/Header"
        elif "/" not in base:
            base = f"{pkg}/{base}"
        if base not in deps:
            deps.append(base)
    return deps


def message_definition(type_name: str) -> str:
    """Full ``ros2msg`` definition of ``type_name`` with every nested type appended (rosbag2 style)."""
    pkg, _, name = _split_type(type_name)
    root_text = _msg_file(type_name).read_text()
    parts = [root_text.rstrip("\n")]
    seen = {f"{pkg}/{name}"}
    todo = _dependencies(pkg, root_text)
    while todo:
        dep = todo.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        dpkg, _, dname = _split_type(dep)
        text = _msg_file(dep).read_text()
        parts.append(f"{_SEPARATOR}\nMSG: {dpkg}/{dname}\n{text.rstrip(chr(10))}")
        todo += [d for d in _dependencies(dpkg, text) if d not in seen]
    return "\n".join(parts) + "\n"


class McapSink:
    """Serialized ROS 2 messages -> one MCAP file (profile ``ros2``, zstd chunks).

    ``write`` only queues the bytes (a deque append: cheap enough for a subscription callback at
    kHz rates); a writer thread appends them to the file every ``flush_period_s``, so chunk
    compression (~8 ms per 1 MiB chunk measured here) never runs in the recorder's spin loop.
    ``close`` writes what is queued and finishes the file (summary, statistics); an error of the
    writer thread is raised by the next ``write`` or by ``close``.

    Invariant: a topic has exactly one type; ``write`` on an unknown topic raises.
    """

    def __init__(self, path: str | Path, metadata: dict[str, str] | None = None,
                 flush_period_s: float = 0.05) -> None:
        from mcap.well_known import MessageEncoding, SchemaEncoding
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = open(self.path, "wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="mtm_runtime.recording")
        self._schema_enc, self._msg_enc = SchemaEncoding.ROS2, MessageEncoding.CDR
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._seq: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.types: dict[str, str] = {}
        self._closed = False
        self._io = threading.Lock()  # the mcap Writer: writer thread vs add_topic / add_metadata / close
        self._queue: deque[tuple[str, bytes, int, int | None]] = deque()
        self._wake, self._stop = threading.Event(), False
        self._error: BaseException | None = None
        self._period_s = float(flush_period_s)
        if metadata:
            self.add_metadata("mtm_runtime", metadata)
        self._thread = threading.Thread(target=self._drain_loop, name="mcap-writer", daemon=True)
        self._thread.start()

    def add_topic(self, topic: str, type_name: str) -> None:
        """Register ``topic`` with ``type_name`` (``pkg/msg/Type``); RecordingError if no definition."""
        if topic in self._channels:
            if self.types[topic] != type_name:
                raise RecordingError(f"{topic}: already recorded as {self.types[topic]}, not {type_name}")
            return
        definition = message_definition(type_name).encode()
        with self._io:
            if type_name not in self._schemas:
                self._schemas[type_name] = self._writer.register_schema(type_name, self._schema_enc, definition)
            channel = self._writer.register_channel(topic, self._msg_enc, self._schemas[type_name])
        self.types[topic], self.counts[topic], self._seq[topic] = type_name, 0, 0
        self._channels[topic] = channel

    def add_metadata(self, name: str, values: dict[str, Any]) -> None:
        """One MCAP metadata record ``name`` (values are stored as strings)."""
        with self._io:
            self._writer.add_metadata(name, {str(k): str(v) for k, v in values.items()})

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int | None = None) -> None:
        """Queue one serialized (CDR) message (``data`` must not change afterwards: bytes are)."""
        if topic not in self._channels:
            raise RecordingError(f"{topic}: not registered (call add_topic first)")
        if self._error is not None:
            raise RecordingError(f"{self.path}: cannot write ({type(self._error).__name__}: {self._error})")
        self._queue.append((topic, data, log_time_ns, publish_time_ns))
        self.counts[topic] += 1

    def _drain_loop(self) -> None:
        while not self._stop:
            self._wake.wait(self._period_s)
            try:
                self._write_queued()
            except Exception as e:  # noqa: BLE001 - reported by write()/close(), naming the file
                self._error = e
                return

    def _write_queued(self) -> None:
        q, add, channels, seq = self._queue, self._writer.add_message, self._channels, self._seq
        with self._io:
            while q:
                topic, data, log_ns, pub_ns = q.popleft()
                add(channels[topic], log_time=int(log_ns), data=data,
                    publish_time=int(log_ns if pub_ns is None else pub_ns), sequence=seq[topic])
                seq[topic] += 1

    def close(self) -> None:
        """Write everything queued and finish the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop = True
        self._wake.set()
        self._thread.join()
        try:
            if self._error is None:
                self._write_queued()
            with self._io:
                self._writer.finish()
        finally:
            self._file.close()
        if self._error is not None:
            raise RecordingError(f"{self.path}: writing failed ({type(self._error).__name__}: {self._error})")

    def __enter__(self) -> "McapSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Record:
    """One decoded message: topic, type name, receive time (ns), publish/stamp time (ns), message."""

    topic: str
    type_name: str
    log_time_ns: int
    publish_time_ns: int
    msg: Any


def read_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[Record]:
    """Decoded messages of ``path`` in log-time order (optionally only ``topics``)."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording")
    wanted = None if topics is None else [_norm(t) for t in topics]
    with open(path, "rb") as f:
        try:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            for schema, channel, message, decoded in reader.iter_decoded_messages(topics=wanted, log_time_order=True):
                yield Record(channel.topic, schema.name if schema else "", message.log_time, message.publish_time,
                             decoded)
        except Exception as e:  # noqa: BLE001 - report the file, not a library traceback
            if isinstance(e, RecordingError):
                raise
            raise RecordingError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def summary(path: str | Path) -> dict[str, Any]:
    """Topics, types, message counts and metadata of a recording (no decoding)."""
    from mcap.reader import make_reader

    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: no such recording")
    with open(path, "rb") as f:
        try:
            reader = make_reader(f)
            s = reader.get_summary()
            meta = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        except Exception as e:  # noqa: BLE001 - report the file, not a library traceback
            raise RecordingError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    if s is None:
        raise RecordingError(f"{path}: no summary section (was the recording closed?)")
    counts = s.statistics.channel_message_counts if s.statistics else {}
    topics = {ch.topic: {"type": s.schemas[ch.schema_id].name, "messages": int(counts.get(cid, 0))}
              for cid, ch in s.channels.items()}
    return {"topics": topics, "metadata": meta}


def _norm(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic
