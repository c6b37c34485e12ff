"""Parameters checked as a whole set, then applied: the policy node's parameter plumbing.

``CheckedParameters`` is mixed into a node class. It declares every parameter of a table
(``mtm_runtime.policy_params.PARAMETERS``: name -> default, description, choices and ranges, as
data), reads them (``p``, ``values``), checks an update as one set with ``check_update(changes)``
(no side effect; ``apply_update`` runs only once the whole set passed) and counts and reports every
refusal, whether rclpy's descriptor check or the node's own refused it.
"""
from __future__ import annotations

from typing import Any, Mapping

from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter

from mtm_runtime import policy_params as pp
from mtm_runtime.ros_nodes import conversions as conv


class CheckedParameters:
    """Mixin for an ``rclpy`` node; the node provides ``check_update`` and ``on_refused``."""

    param_refusals = 0

    def declare_checked_parameters(self, table: Mapping[str, pp.Param]) -> None:
        self._table = dict(table)
        for name, prm in self._table.items():
            self.declare_parameter(name, prm.default, conv.parameter_descriptor(prm))  # type: ignore[attr-defined]
        self.add_on_set_parameters_callback(self._on_set_parameters)  # type: ignore[attr-defined]

    def p(self, name: str) -> Any:
        value = self.get_parameter(name).value  # type: ignore[attr-defined]
        return [] if value is None and name in pp.LIST_PARAMS else value

    def _values(self) -> dict[str, Any]:
        return {name: self.p(name) for name in self._table}

    def check_update(self, changes: dict[str, Any]) -> tuple[str, str] | None:
        """(name, reason) if ``changes`` must be refused as a whole, else None (then applied)."""
        raise NotImplementedError

    def on_refused(self, what: str) -> None:
        """A refusal happened (``what``: the parameters and the reason)."""

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {prm.name: prm.value for prm in params}
        problem = self.check_update(changes)
        if problem is not None:
            name, reason = problem
            self.get_logger().warning(f"refused {name}={changes.get(name, self.p(name))!r}: {reason}")  # type: ignore[attr-defined]
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        """rclpy's, plus: every refusal (descriptor range or ``check_update``) is counted and reported."""
        results = super().set_parameters(parameter_list)  # type: ignore[misc]
        for prm, res in zip(parameter_list, results):
            self._count_refusal([prm], res)
        return results

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """rclpy's (the ``~/set_parameters`` service uses it), plus refusals counted and reported."""
        res = super().set_parameters_atomically(parameter_list)  # type: ignore[misc]
        self._count_refusal(parameter_list, res)
        return res

    def _count_refusal(self, params: list[Parameter], res: SetParametersResult) -> None:
        if not res.successful:
            self.param_refusals += 1
            self.on_refused(", ".join(f"{p.name}={p.value!r}" for p in params) + f": {res.reason}")
