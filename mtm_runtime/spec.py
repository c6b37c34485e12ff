"""TrajectorySpec: the one description of what a trajectory window holds.

A window is ``horizon`` (T) time steps; at every step each modality contributes one token.
Modalities are ordered; that order fixes

* the packed array layout ``[..., T, D]`` with ``D = sum(widths)`` (modality ``m`` occupies the
  columns ``offset(m) : offset(m) + width(m)``),
* the mask layout ``[..., T, M]`` (column ``m`` is modality ``m``; 1 = visible, 0 = hidden),
* the token order inside the transformer: time-major, token ``t * M + m``.

Training, export, the runtime and the ROS nodes all read the spec from the checkpoint (or from
the ONNX metadata / engine sidecar); nobody passes widths by hand.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

#: Names the runtime gives a meaning to. Other names are allowed (extra sensors, say).
STATES, ACTIONS, RETURNS, REWARDS, GOALS = "states", "actions", "returns", "rewards", "goals"
KNOWN_MODALITIES = (STATES, ACTIONS, RETURNS, REWARDS, GOALS)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SpecError(ValueError):
    """A spec (or data checked against a spec) is invalid; the message names the field."""


@dataclass(frozen=True)
class Modality:
    """One token stream: ``width`` floats per time step."""

    name: str
    width: int


@dataclass(frozen=True)
class TrajectorySpec:
    """Ordered modalities and the window length ``horizon`` (T). Immutable and hashable."""

    modalities: tuple[Modality, ...]
    horizon: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if not isinstance(self.horizon, int) or isinstance(self.horizon, bool) or self.horizon < 1:
            raise SpecError(f"spec.horizon must be an integer >= 1, got {self.horizon!r}")
        if not self.modalities:
            raise SpecError("spec.modalities must name at least one modality")
        seen: set[str] = set()
        for i, m in enumerate(self.modalities):
            if not isinstance(m, Modality):
                raise SpecError(f"spec.modalities[{i}] must be a Modality, got {type(m).__name__}")
            if not isinstance(m.name, str) or not _NAME.match(m.name):
                raise SpecError(f"spec.modalities[{i}].name must match [a-z][a-z0-9_]*, got {m.name!r}")
            if m.name in seen:
                raise SpecError(f"spec.modalities[{i}].name {m.name!r} appears twice")
            seen.add(m.name)
            if not isinstance(m.width, int) or isinstance(m.width, bool) or m.width < 1:
                raise SpecError(f"spec.modalities[{i}].width ({m.name}) must be an integer >= 1, got {m.width!r}")
        if STATES not in seen:
            raise SpecError("spec.modalities must include 'states'")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, horizon: int, **widths: int) -> "TrajectorySpec":
        """``TrajectorySpec.create(4, states=11, actions=3, returns=1)`` (keyword order kept)."""
        return cls(tuple(Modality(n, w) for n, w in widths.items()), horizon)

    # ---- queries (cached: the spec is immutable, and the control loop asks every step) ------
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @cached_property
    def widths(self) -> tuple[int, ...]:
        return tuple(m.width for m in self.modalities)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}

    @property
    def num_modalities(self) -> int:
        """M: tokens per time step."""
        return len(self.modalities)

    @property
    def num_tokens(self) -> int:
        """T * M: tokens in one window."""
        return self.horizon * len(self.modalities)

    @cached_property
    def packed_width(self) -> int:
        """D: floats per time step in the packed layout."""
        return sum(self.widths)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """Column of ``name`` in the mask layout; SpecError if absent."""
        try:
            return self._index[name]
        except KeyError:
            raise SpecError(f"spec has no modality {name!r} (it has {', '.join(self.names)})") from None

    def width(self, name: str) -> int:
        return self.modalities[self.index(name)].width

    def offset(self, name: str) -> int:
        """First column of ``name`` in the packed layout."""
        i = self.index(name)
        return sum(self.widths[:i])

    def slice(self, name: str) -> slice:
        """Columns of ``name`` in the packed layout: ``packed[..., spec.slice('actions')]``."""
        start = self.offset(name)
        return slice(start, start + self.width(name))

    def token_index(self, t: int, name: str) -> int:
        """Position of modality ``name`` at time ``t`` in the transformer's token sequence."""
        if not 0 <= t < self.horizon:
            raise SpecError(f"time index {t} outside the window [0, {self.horizon})")
        return t * self.num_modalities + self.index(name)

    # ---- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"horizon": self.horizon, "modalities": [{"name": m.name, "width": m.width} for m in self.modalities]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "spec") -> "TrajectorySpec":
        """Build from a dict; errors name ``where`` and the offending field."""
        if not isinstance(d, Mapping):
            raise SpecError(f"{where} must be an object, got {type(d).__name__}")
        for key in ("horizon", "modalities"):
            if key not in d:
                raise SpecError(f"{where}.{key} is missing")
        mods = d["modalities"]
        if not isinstance(mods, list):
            raise SpecError(f"{where}.modalities must be a list")
        out = []
        for i, m in enumerate(mods):
            if not isinstance(m, Mapping) or "name" not in m or "width" not in m:
                raise SpecError(f"{where}.modalities[{i}] must be an object with 'name' and 'width'")
            out.append(Modality(m["name"], m["width"]))
        try:
            return cls(tuple(out), d["horizon"])
        except SpecError as e:
            raise SpecError(str(e).replace("spec.", f"{where}.", 1)) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "spec") -> "TrajectorySpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{where} is not valid JSON: {e}") from None
        return cls.from_dict(d, where)

    def describe(self) -> str:
        """One line for logs: ``T=4 states:11 actions:3 returns:1``."""
        return f"T={self.horizon} " + " ".join(f"{m.name}:{m.width}" for m in self.modalities)

    def check_compatible(self, other: "TrajectorySpec", where: str = "spec") -> None:
        """Raise SpecError naming the first difference between two specs."""
        if self == other:
            return
        if self.horizon != other.horizon:
            raise SpecError(f"{where}.horizon is {other.horizon}, expected {self.horizon}")
        if self.names != other.names:
            raise SpecError(f"{where}.modalities are {list(other.names)}, expected {list(self.names)}")
        for a, b in zip(self.modalities, other.modalities):
            if a.width != b.width:
                raise SpecError(f"{where}.modalities[{a.name}].width is {b.width}, expected {a.width}")


def pack(spec: TrajectorySpec, parts: Mapping[str, Any], like: Any = None) -> Any:
    """Concatenate per-modality arrays ``[..., w_m]`` into the packed layout ``[..., D]`` (numpy)."""
    import numpy as np

    missing = [n for n in spec.names if n not in parts]
    if missing:
        raise SpecError(f"pack: missing modalities {missing}")
    for n in spec.names:
        if np.shape(parts[n])[-1] != spec.width(n):
            raise SpecError(f"pack: {n} has width {np.shape(parts[n])[-1]}, spec says {spec.width(n)}")
    return np.concatenate([np.asarray(parts[n], dtype=np.float32) for n in spec.names], axis=-1)


def unpack(spec: TrajectorySpec, packed: Any) -> dict[str, Any]:
    """Split ``[..., D]`` into views ``{name: [..., w_m]}`` (no copy)."""
    if packed.shape[-1] != spec.packed_width:
        raise SpecError(f"unpack: last dimension is {packed.shape[-1]}, spec packs {spec.packed_width}")
    return {n: packed[..., spec.slice(n)] for n in spec.names}


def names_in_order(spec: TrajectorySpec, names: Iterable[str]) -> list[str]:
    """``names`` sorted by the spec's modality order; SpecError on an unknown name."""
    wanted = set(names)
    for n in wanted:
        spec.index(n)
    return [n for n in spec.names if n in wanted]
