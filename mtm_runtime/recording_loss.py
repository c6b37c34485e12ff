"""Loss accounting of a recording: what the recorder received and missed, per topic (no ROS).

:class:`LossCounter` counts, per topic and per publisher, the messages received and the gaps in
the publisher's DDS publication sequence numbers (1, 2, 3 ... per writer; no change to any
message). The recorder writes the counts into the file as the MCAP metadata record
``mtm_record`` (:data:`RECORD_METADATA`, :func:`loss_metadata`), read back by
:func:`recorded_loss`. :func:`loss_summary`, :func:`loss_warnings` and :func:`loss_note` are the
lines a recorder, or a reader of a recording, prints: a lossy recording is never silent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mtm_runtime.recording import RecordingError, summary

#: Name of the MCAP metadata record holding the recorder's per-topic received/missed counts.
RECORD_METADATA = "mtm_record"


@dataclass
class _PublisherStream:
    """What one publisher's sequence numbers on one topic showed: the lowest and highest seen,
    how many arrived, and whether it appeared after the topic was subscribed (then its messages
    from sequence number 1 on were all meant for the recording)."""

    first: int
    last: int
    received: int
    since_one: bool


class LossCounter:
    """Messages received and missed, per topic, from each publisher's DDS publication sequence numbers.

    A publisher numbers its messages 1, 2, 3 ...; for each (topic, publisher) the recorder keeps
    the lowest and highest number seen and the count received. Missed = (highest - lowest + 1 -
    received), plus the ``lowest - 1`` messages before the first received when the publisher was
    not in the graph yet when the topic was subscribed (``subscribed``): those were published
    while the recorder listened. For a publisher that was already there, they are reported as
    ``before_subscribed`` (published before the recording began; not a loss); ``missed_at_start``
says how much of ``missed`` is such a start (DDS discovery is matched at each end separately,
so a new writer may send before it knows our reader). Not counted:
    messages published after the last one received (``mtm record`` drains briefly before closing);
    compare with the publishers' own counts for those.

    A topic whose messages carry no sequence number (rclpy without message info, e.g. Humble)
    is reported with ``counted: False``.
    """

    def __init__(self) -> None:
        self._streams: dict[tuple[str, bytes], _PublisherStream] = {}
        self._received: dict[str, int] = {}
        self._unsequenced: dict[str, int] = {}
        self._present: dict[str, frozenset[bytes]] = {}

    def subscribed(self, topic: str, publishers: Iterable[bytes]) -> None:
        """``topic`` is now subscribed; ``publishers`` (GIDs) were in the graph at that moment."""
        self._present[topic] = frozenset(bytes(p) for p in publishers)
        self._received.setdefault(topic, 0)

    def note(self, topic: str, publisher: bytes | None, seq: int | None) -> None:
        """One message of ``topic`` from ``publisher`` (GID) with publication sequence number ``seq``."""
        self._received[topic] = self._received.get(topic, 0) + 1
        if publisher is None or seq is None:
            self._unsequenced[topic] = self._unsequenced.get(topic, 0) + 1
            return
        s = self._streams.get((topic, publisher))
        if s is None:
            self._streams[(topic, publisher)] = _PublisherStream(
                seq, seq, 1, publisher not in self._present.get(topic, frozenset()))
        else:
            s.received += 1
            if seq > s.last:
                s.last = seq
            elif seq < s.first:
                s.first = seq

    def report(self) -> dict[str, dict[str, Any]]:
        """topic -> {received, missed, missed_at_start, before_subscribed, publishers, counted} (topics
        that got messages). ``missed_at_start``: the part of ``missed`` sent by a new publisher
        before its first message reached us (its writer had not matched our reader yet)."""
        out: dict[str, dict[str, Any]] = {}
        for topic, n in self._received.items():
            if not n:
                continue
            gaps = at_start = before = pubs = 0
            for (t, _gid), s in self._streams.items():
                if t != topic:
                    continue
                pubs += 1
                gaps += max(0, s.last - s.first + 1 - s.received)
                if s.since_one:
                    at_start += s.first - 1
                else:
                    before += s.first - 1
            out[topic] = {"received": n, "missed": gaps + at_start, "missed_at_start": at_start,
                          "before_subscribed": before, "publishers": pubs, "counted": topic not in self._unsequenced}
        return out


def loss_metadata(report: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The ``mtm_record`` metadata record for ``LossCounter.report()``."""
    return {"topics": json.dumps(report, sort_keys=True),
            "missed_total": str(sum(r["missed"] for r in report.values())),
            "counted": str(all(r["counted"] for r in report.values())).lower(),
            "method": "gaps in each publisher's DDS publication sequence numbers"}


def loss_summary(report: dict[str, dict[str, Any]]) -> str:
    """One line: messages per topic and how many were missed in all (``LossCounter.report()``)."""
    parts = [f"{t} {r['received']}" + (f" ({r['missed']} missed)" if r["missed"] else "")
             + ("" if r["counted"] else " (not counted)")
             + (f" ({r['before_subscribed']} published before the recorder subscribed)" if r["before_subscribed"] else "")
             for t, r in report.items()]
    missed = sum(r["missed"] for r in report.values())
    uncounted = all(not r["counted"] for r in report.values()) and report
    return (", ".join(parts) or "no messages") + ("; losses not counted" if uncounted else f"; {missed} missed")


def loss_warnings(report: dict[str, dict[str, Any]]) -> list[str]:
    """One line per topic that lost messages or could not be counted (empty: a lossless recording)."""
    lines = []
    for topic, r in report.items():
        if r["missed"]:
            lines.append(f"{topic}: {r['missed']} of {r['received'] + r['missed']} messages missed"
                         + (f" ({r['missed_at_start']} before the first one arrived: the publisher had not "
                            "matched the recorder yet)" if r.get("missed_at_start") else ""))
        elif not r["counted"]:
            lines.append(f"{topic}: losses not counted (no publication sequence numbers from this rclpy)")
    return lines


def loss_note(report: dict[str, dict[str, Any]] | None) -> str:
    """What a reader of a recording says about the recorder's loss count (``recorded_loss``)."""
    if report is None:
        return "no recorder loss count in the file (not written by mtm record)"
    missed = {t: r["missed"] for t, r in report.items() if r["missed"]}
    if missed:
        return (f"the recorder missed {sum(missed.values())} messages ("
                + ", ".join(f"{t} {n}" for t, n in missed.items()) + ")")
    uncounted = [t for t, r in report.items() if not r["counted"]]
    if uncounted:
        return f"the recorder could not count losses on {', '.join(uncounted)}"
    return "the recorder missed no messages"


def recorded_loss(path: str | Path) -> dict[str, dict[str, Any]] | None:
    """The per-topic counts ``mtm record`` wrote into ``path`` (None: the file has no such record)."""
    meta = summary(path)["metadata"].get(RECORD_METADATA)
    if meta is None or "topics" not in meta:
        return None
    try:
        return json.loads(meta["topics"])
    except ValueError as e:
        raise RecordingError(f"{path}: metadata {RECORD_METADATA!r} is not valid JSON ({e})") from e
