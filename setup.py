"""mtm_runtime: pip package and ament_python package in one.

pip users pick extras; a robot with system ROS 2 (and JetPack's TensorRT) installs without the
`ros` extra so that nothing pip-installs the ROS wheels over the system ones.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mtm_runtime"

EXTRAS = {
    "sim": ["gymnasium[mujoco]>=1.0", "mujoco>=3.1"],
    "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.1"],
    "ros": [  # PyPI wheels of ROS 2 (dev machines only; robots use system ROS 2)
        "ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-std-msgs", "ros-std-srvs", "ros-sensor-msgs",
        "ros-diagnostic-msgs", "ros-lifecycle-msgs", "ros-rosgraph-msgs", "ros-builtin-interfaces",
        "ros-trajectory-msgs",
    ],
    "hw": ["pyserial>=3.5"],
    "data": ["h5py>=3.9", "mcap>=1.1", "mcap-ros2-support>=0.5"],
    "sign": ["cryptography>=42"],  # Ed25519 signatures on model artefacts (MTM_SIGNING_KEY / MTM_TRUSTED_KEYS)
    "dev": ["pytest>=7.4", "pytest-timeout>=2.2", "hypothesis>=6.90", "psutil>=5.9"],
}
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Masked Trajectory Model runtime: offline training to a ROS 2 control loop",
    # One installed namespace: training/, sim/, export/ and ros_nodes/ stay top-level folders of the
    # repository and are reached as mtm_runtime.training etc. through the links in mtm_runtime/
    # (package_dir cannot do it: colcon's --symlink-install maps only top-level packages).
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    python_requires=">=3.10",
    # torch: pin to the build your platform needs (CPU wheel here, JetPack wheel on a Jetson).
    install_requires=["numpy>=1.24", "safetensors>=0.4", "torch>=2.1", "tqdm>=4.60",
                      "matplotlib>=3.7", "pyyaml>=6.0", "psutil>=5.9"],
    extras_require=EXTRAS,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        # the bundled models, so installed configs can say package://mtm_runtime/models/reacher_embedded
        *((f"share/{PACKAGE}/models/{m}", [f"models/{m}/{f}" for f in ("model.safetensors", "mtm.json")])
          for m in ("reacher_embedded", "reacher_chunk")),
    ],
    # reference returns (normalised scores), the locomotion learning runs (experts and medium tiers), the robot files
    package_data={f"{PACKAGE}.sim": ["*.json", "learning_runs/*.h5"], PACKAGE: ["robots/*.yaml"]},
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "mtm = mtm_runtime.cli:main",
            "mtm_policy_node = mtm_runtime.ros_nodes.policy_node:main",
            "mtm_serial_bridge = mtm_runtime.ros_nodes.serial_bridge:main",
            "mtm_sim_bridge = mtm_runtime.ros_nodes.sim_bridge:main",
        ],
    },
)
