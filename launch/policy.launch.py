"""ros2 launch mtm_runtime policy.launch.py model:=<checkpoint> target:=sim|serial|none ...

The node set comes from ``mtm_runtime.ros_nodes.launch_description`` (the same description ``mtm launch``
uses); this file only maps it onto the ROS 2 launch API.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from mtm_runtime.ros_nodes.launch_description import LAUNCH_ARGUMENTS, describe, launch_node_kwargs


def make_nodes(context, *args, **kwargs):
    """OpaqueFunction body: resolve the launch arguments, build one Node per NodeSpec."""
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    return [Node(**launch_node_kwargs(spec)) for spec in describe(**values)]


def generate_launch_description():
    arguments = [DeclareLaunchArgument(name, default_value=default, description=text)
                 for name, (default, text) in LAUNCH_ARGUMENTS.items()]
    return LaunchDescription(arguments + [OpaqueFunction(function=make_nodes)])
