"""mtm_runtime: a Masked Trajectory Model from offline training to a robot's control loop.

No ROS import anywhere in this package (ROS adapters live in ``ros_nodes/``).
"""
from mtm_runtime.spec import Modality, SpecError, TrajectorySpec

__version__ = "0.1.0"
__all__ = ["Modality", "SpecError", "TrajectorySpec", "__version__"]
