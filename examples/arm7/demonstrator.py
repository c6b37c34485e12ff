"""The worked example's scripted demonstrator: a ROS 2 node that drives arm7 to its goal pose.

    python examples/arm7/demonstrator.py      (node ``arm7_demonstrator``; run by run_example.py)

Subscribes ``/joint_states`` (the sim bridge's, or the robot's), publishes ``/commands``
(Float64MultiArray of joint position targets, what the trained policy will publish) and serves
``~/reset`` (std_srvs/Trigger) so the bridge's episode handshake works as it does with the policy
node. The rule (:func:`demo_command`): step each joint toward ``GOAL_POSE`` by at most
``MAX_STEP`` rad per control period. The node only converts messages; the rule is plain Python.
"""
from __future__ import annotations

import sys

import numpy as np

JOINTS = ("j1", "j2", "j3", "j4", "j5", "j6", "j7")
#: Where the fingertip meets the target (the MJCF places the target there).
GOAL_POSE = np.array([0.6, -0.5, 0.3, 1.0, -0.4, 0.6, 0.2])
MAX_STEP = 0.1    # rad per control period


def demo_command(q: np.ndarray) -> np.ndarray:
    """The next position command from the measured joint positions ``q`` (robot joint order)."""
    return q + np.clip(GOAL_POSE - q, -MAX_STEP, MAX_STEP)


def main() -> int:
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from std_srvs.srv import Trigger

    class Demonstrator(Node):
        def __init__(self) -> None:
            super().__init__("arm7_demonstrator")
            self.pub = self.create_publisher(Float64MultiArray, "/commands", 10)
            self.create_subscription(JointState, "/joint_states", self.on_state, qos_profile_sensor_data)
            self.create_service(Trigger, "~/reset", self.on_reset)

        def on_state(self, msg: JointState) -> None:
            index = {n: i for i, n in enumerate(msg.name)}
            if any(j not in index for j in JOINTS):
                return
            q = np.array([msg.position[index[j]] for j in JOINTS])
            self.pub.publish(Float64MultiArray(data=demo_command(q).tolist()))

        def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
            response.success, response.message = True, "ready"
            return response

    rclpy.init()
    node = Demonstrator()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
