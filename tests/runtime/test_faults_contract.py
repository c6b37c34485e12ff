"""docs/safety.md vs mtm_runtime.safety_contract: the table in the document is the constants."""
from __future__ import annotations

from pathlib import Path

from mtm_runtime import safety_contract as contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "safety.md"


def _table() -> list[list[str]]:
    text = DOC.read_text()
    body = text.split("<!-- contract-table:start -->")[1].split("<!-- contract-table:end -->")[0]
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in body.strip().splitlines()]
    return rows[2:]  # header, separator


def test_docs_table_matches_contract_constants() -> None:
    rows = _table()
    assert [r[0] for r in rows] == list(contract.CONTRACT), "fault kinds differ between docs and constants"
    for kind, level, counter, detect, report, recover, action, recovery in rows:
        r = contract.row(kind)
        assert (level, counter, int(detect), float(report), int(recover), action, recovery) == \
            (r.level, r.counter, r.detect_periods, r.report_s, r.recover_periods, r.action, r.recovery), kind
        assert r.level in contract.LEVELS and r.report_s <= 1.0


def test_docs_mention_every_constant_and_bridge_fault() -> None:
    text = DOC.read_text()
    for needle in (f"{contract.FAULT_HOLD_S:g} s", f"DIAG_MIN_INTERVAL_S = {contract.DIAG_MIN_INTERVAL_S:g}",
                   f"`{contract.MAX_INPUT_RATE_FACTOR:g}`", f"{contract.SHUTDOWN_RAMP_MAX_STEPS}",
                   f"stale_timeout + {contract.MAX_COMMAND_GAP_PERIODS} P"):
        assert needle in text, needle
    for kind in [*contract.SERIAL_CONTRACT, *contract.SIM_CONTRACT]:
        assert kind in text, kind


def test_policy_node_diagnostics_use_contract_kinds() -> None:
    """Every fault kind the node and its ControlLoop report is a row of the contract (grep of the sources)."""
    import re

    root = DOC.parents[1]
    src = "".join((root / f).read_text() for f in ("ros_nodes/policy_node.py", "mtm_runtime/control_loop.py"))
    kinds = set(re.findall(r'(?:faults\.note|_fault)\("([a-z_]+)"', src))
    assert kinds and kinds <= set(contract.CONTRACT), kinds - set(contract.CONTRACT)
