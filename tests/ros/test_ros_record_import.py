"""Recording and import over real rclpy + Fast DDS: a lockstep rollout through the launch node set
is recorded to MCAP, imported into our HDF5 layout, loaded with ``load_episodes`` and trained on
for a few steps; ``mtm compare-rollouts`` on two recordings; ``mtm record`` as a CLI.

The two lockstep recordings are always made with a busy loop on every core (``cpu_hog_always``):
nothing may be lost on a busy machine. ``--cpu-hog`` / ``MTM_TEST_CPU_HOG=1`` hog the CLI tests
too. A recorder starved outright (SIGSTOP) loses messages of a keep-last-1 publisher: that
recording must say so (warning, exit status 1, counts in the file)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("mcap_ros2")

from mtm_runtime.recording import McapSink, message_definition, read_messages, summary  # noqa: E402
from mtm_runtime.recording_loss import RECORD_METADATA, LossCounter, recorded_loss  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[2]


def _lockstep(tmp: Path, ckpt: Path, name: str, episodes: int = 2, seed: int = 5, **policy: object):
    from mtm_runtime.ros_nodes.closed_loop import run_closed_loop

    return run_closed_loop(str(ckpt), log_dir=tmp / f"{name}_logs", task="reacher", sim_mode="lockstep",
                           episodes=episodes, record=tmp / f"{name}.mcap",
                           policy_params={"mask_mode": "bc", "warmup_iters": 2, "stale_timeout": 5.0,
                                          "control_rate_hz": 50.0, **policy},
                           bridge_params={"seed": seed}, startup_timeout_s=60.0)


def _goal_free_checkpoint(directory: Path) -> Path:
    """Untrained Reacher-width MTM without a goals modality, run in ``bc``: its actions depend only
    on the recorded states, so the recording can be replayed exactly (a goal-mode policy would
    depend on whether /goal or the episode's first observation reached the node first)."""
    import torch

    from mtm_runtime.checkpoint import save_checkpoint
    from mtm_runtime.model import MTM, MTMConfig
    from mtm_runtime.normalise import Normaliser
    from mtm_runtime.safety import ActionLimits
    from mtm_runtime.spec import TrajectorySpec

    spec = TrajectorySpec.create(4, states=8, actions=2, returns=1)
    torch.manual_seed(0)
    model = MTM(spec, MTMConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, mlp_ratio=2))
    return save_checkpoint(directory, model, Normaliser.identity(spec), ActionLimits.symmetric(1.0, 2),
                           provenance={"note": "untrained test checkpoint"})


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory, cpu_hog_always):
    """Two lockstep recordings of the same checkpoint and seeds (deterministic: identical states),
    made beside a busy loop on every core."""
    import os

    from conftest import fresh_domain_id

    tmp = tmp_path_factory.mktemp("rec")
    old = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ.update(ROS_DOMAIN_ID=str(fresh_domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    try:
        ckpt = _goal_free_checkpoint(tmp / "ckpt")
        a = _lockstep(tmp, ckpt, "a")
        b = _lockstep(tmp, ckpt, "b")
        monitored = _lockstep(tmp, ckpt, "monitored", episodes=1, monitor=True)  # the residual topic too
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp, a, b, monitored


def test_message_definitions_decode_with_mcap_ros2() -> None:
    from mcap_ros2._dynamic import generate_dynamic

    for t in ("sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray", "diagnostic_msgs/msg/DiagnosticArray"):
        text = message_definition(t)
        assert t in generate_dynamic(t, text)
    assert "MSG: builtin_interfaces/Time" in message_definition("sensor_msgs/msg/JointState")


def _assert_lossless(result) -> None:
    """The recorder counted every topic and missed nothing of the loop; the file's metadata says
    the same. /diagnostics may lose the policy node's first reports, sent at start-up before its
    writer matched the recorder (nothing in the loop waits for that), but never one after."""
    assert result.loss and all(r["counted"] for r in result.loss.values()), result.loss
    lossy = {t: r for t, r in result.loss.items() if t != "/diagnostics" and r["missed"]}
    assert not lossy, f"recorder missed messages: {lossy}"
    diag = result.loss["/diagnostics"]
    assert diag["missed"] == diag["missed_at_start"], diag
    assert {t: r["received"] for t, r in result.loss.items()} == {t: n for t, n in result.recorded.items() if n}
    assert recorded_loss(result.record_path) == result.loss


def test_recordings_lose_nothing_under_load(recordings) -> None:
    _, a, b, _ = recordings
    for res in (a, b):
        _assert_lossless(res)
        assert res.loss["/observation"]["received"] == 100 and res.loss["/commands"]["received"] >= 100
        meta = summary(res.record_path)["metadata"][RECORD_METADATA]
        assert meta["missed_total"] == str(res.loss["/diagnostics"]["missed"]) and meta["counted"] == "true"


def test_record_import_load_and_train(recordings, tmp_path: Path) -> None:
    from mtm_runtime.sim.tasks import get_task
    from mtm_runtime.training.sources import load_episodes
    from mtm_runtime.training.mcap_import import import_to_hdf5
    from mtm_runtime.training.quick import train_on_episodes

    tmp, a, _, _ = recordings
    assert [e["steps"] for e in a.episodes] == [50, 50]
    info = summary(a.record_path)
    assert info["topics"]["/commands"]["type"] == "std_msgs/msg/Float64MultiArray"
    assert info["topics"]["/observation"]["messages"] == 100 and info["metadata"]["mtm_runtime"]["task"] == "reacher"
    path, rep = import_to_hdf5(a.record_path, "reacher", tmp_path / "data.hdf5")
    assert rep.episodes == 2 and rep.steps == 100 and rep.pairing == "arrival"
    assert rep.held <= 1  # lockstep: every state's command is recorded (the very first may precede the subscription)
    eps = load_episodes(path)
    assert [e.length for e in eps] == [50, 50]
    for ep, reported in zip(eps, a.episodes):  # rewards (last one derived from the reported return) sum up
        assert float(ep["rewards"].sum()) == pytest.approx(reported["return"], abs=1e-4)
        assert ep.present["actions"] and np.all(np.abs(ep["actions"]) <= 1.0)
    task = get_task("reacher")
    # the recorded goal is the bridge's goal of that episode, in every step
    assert np.allclose(eps[0]["goals"], eps[0]["goals"][0])
    # commands are the policy's actions on the recorded states: replay them in process
    from mtm_runtime.policy import Policy

    pol = Policy.load(tmp / "ckpt", mode="bc", threads=1)
    pol.reset()
    replay = [pol.act(s).copy() for s in eps[1]["states"][:10]]
    assert np.allclose(replay, eps[1]["actions"][:10], atol=1e-5)
    _, hist = train_on_episodes(task, eps, None, steps=3, batch_size=8)
    assert len(hist) == 3 and all(np.isfinite(h["loss"]) for h in hist)


def test_compare_rollouts_cli(recordings, tmp_path: Path) -> None:
    tmp, a, b, _ = recordings
    out = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "compare-rollouts", a.record_path, b.record_path,
                          "--png", str(tmp_path / "c.png"), "--json", str(tmp_path / "c.json"),
                          "--model", str(tmp / "ckpt")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "world-model residual per state dim" in out.stdout
    assert "states" in out.stdout and "actions" in out.stdout and (tmp_path / "c.png").stat().st_size > 1000
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["matched_steps"] == 100, (res["episodes"], a.recorded, b.recorded)
    states = [r for r in res["rows"] if r["modality"] == "states"]
    # lockstep, same seeds: the same rollouts, up to the goal/reward that may reach the policy after
    # its step's observation (DDS does not order across topics; sim_bridge.py's known limits):
    # a quiet full suite once saw state RMSE 4.7e-5
    assert len(states) == 8 and all(r["rmse"] < 1e-3 for r in states), states
    assert len([r for r in res["rows"] if r["modality"] == "actions"]) == 2
    gap = res["model_gap"]  # the same rollouts: the same residual in A and B, dimension by dimension
    assert len(gap["residual_a"]) == 8 and all(np.isfinite(gap["residual_a"])) and max(gap["residual_a"]) > 0
    assert gap["ratio_b_over_a"] == pytest.approx([1.0] * 8, abs=0.05)


def test_the_monitor_residual_is_recorded_and_compared(recordings, tmp_path: Path) -> None:
    """With ``monitor: true`` the policy publishes each plan's residual on /model_residual; the
    recording holds one message per plan with a full window behind it (lockstep, chunk 1: a plan per
    state; T = 4: the first 3 of the episode have no forward-dynamics window) and ``mtm
    compare-rollouts`` reports it without a model."""
    from mtm_runtime.training.rollout_compare import recorded_residual

    _, a, _, monitored = recordings
    _assert_lossless(monitored)
    n = monitored.loss["/model_residual"]["received"]
    assert n == 50 - 3, monitored.loss
    rec = recorded_residual(monitored.record_path)
    assert rec["plans"] == n and len(rec["rms_per_dim"]) == 8 and 0 < rec["score_p50"] <= rec["score_p99"]
    assert recorded_residual(a.record_path) is None
    out = subprocess.run([sys.executable, "-m", "mtm_runtime.cli", "compare-rollouts", a.record_path,
                          monitored.record_path, "--json", str(tmp_path / "r.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "A: no monitor in this run" in out.stdout and f"B: {n} plans" in out.stdout, out.stdout
    assert json.loads((tmp_path / "r.json").read_text())["recorded_residual"]["b"] == rec


@contextmanager
def _recording_rewards(out: Path, depth: int, duration_s: float, *more_topics: str):
    """``mtm record`` of /reward (and ``more_topics``) as a CLI process beside a /reward publisher
    (RELIABLE, keep last ``depth``) it has subscribed to; yields (process, publisher)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros_harness import Graph
    from std_msgs.msg import Float64

    proc = subprocess.Popen([sys.executable, "-m", "mtm_runtime.cli", "record", "--topics", "reward", *more_topics,
                             "-o", str(out), "--duration", str(duration_s)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with Graph() as g:
            pub = g.publisher(Float64, "reward", QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE))
            g.start()
            deadline = time.monotonic() + 20
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert pub.get_subscription_count() > 0, "mtm record never subscribed"
            time.sleep(0.3)
            yield proc, pub
    finally:
        if proc.poll() is None:
            proc.kill()


def _publish(pub, values: range, pause_s: float = 0.01) -> None:
    from std_msgs.msg import Float64

    for v in values:
        pub.publish(Float64(data=float(v)))
        if pause_s:
            time.sleep(pause_s)


def test_mtm_record_cli(ros_env, cpu_hog, tmp_path: Path) -> None:
    out = tmp_path / "r.mcap"
    with _recording_rewards(out, 10, 6, "/nothing_here") as (proc, pub):
        _publish(pub, range(20))
        text, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, text + err
    assert "never published: /nothing_here" in text and "/reward 20; 0 missed" in text and not err
    vals = [r.msg.data for r in read_messages(out, ["/reward"])]
    assert vals == [float(i) for i in range(20)]
    loss = recorded_loss(out)
    assert loss == {"/reward": {"received": 20, "missed": 0, "missed_at_start": 0, "before_subscribed": 0,
                                "publishers": 1, "counted": True}}


def test_mtm_record_reports_what_a_stalled_recorder_missed(ros_env, cpu_hog, tmp_path: Path) -> None:
    """A recorder that gets no CPU (SIGSTOP) while a RELIABLE keep-last-1 publisher (the policy's
    /commands QoS) sends 3000 messages: DDS buffers a few hundred, the rest are overwritten in
    the writer's history. The gaps in the publication sequence numbers are counted exactly:
    received + missed = published; stderr names the topic; exit status 1; counts in the file."""
    out = tmp_path / "lossy.mcap"
    with _recording_rewards(out, 1, 0) as (proc, pub):  # until SIGINT: the stop must not end the recording
        _publish(pub, range(10))
        time.sleep(0.3)
        proc.send_signal(signal.SIGSTOP)
        try:
            _publish(pub, range(10, 3010), pause_s=0)
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        _publish(pub, range(3010, 3020))
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        text, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, text + err
    loss = recorded_loss(out)["/reward"]
    vals = [r.msg.data for r in read_messages(out, ["/reward"])]
    assert loss["missed"] > 0 and loss["received"] + loss["missed"] == 3020 and loss["received"] == len(vals)
    assert vals[:10] == [float(i) for i in range(10)] and vals[-10:] == [float(i) for i in range(3010, 3020)]
    assert f"/reward {loss['received']} ({loss['missed']} missed)" in text
    assert f"WARNING: /reward: {loss['missed']} of 3020 messages missed" in err


def test_loss_counter_gaps_and_late_publishers() -> None:
    c = LossCounter()
    c.subscribed("/a", [b"old"])
    for seq in (41, 42, 44, 45):  # present when subscribed: 1..40 came before the recording
        c.note("/a", b"old", seq)
    for seq in (3, 4, 5):  # appeared later: 1 and 2 were published while we listened
        c.note("/a", b"new", seq)
    c.note("/b", None, None)
    rep = c.report()
    assert rep["/a"] == {"received": 7, "missed": 3, "missed_at_start": 2, "before_subscribed": 40, "publishers": 2,
                         "counted": True}
    assert rep["/b"] == {"received": 1, "missed": 0, "missed_at_start": 0, "before_subscribed": 0, "publishers": 0,
                         "counted": False}


def _copy_with_loss(src: str, dst: Path, loss: dict | None, drop: tuple[str, ...] = ()) -> Path:
    """``src``'s messages (raw, times kept; ``drop``'s topics left out) in a new file whose
    ``mtm_record`` record says ``loss`` (None: no such record)."""
    from mcap.reader import make_reader

    from mtm_runtime.recording_loss import loss_metadata

    with open(src, "rb") as f, McapSink(dst) as sink:
        for schema, channel, message in make_reader(f).iter_messages():
            if channel.topic not in drop:
                sink.add_topic(channel.topic, schema.name)
                sink.write(channel.topic, message.data, message.log_time, message.publish_time)
        if loss is not None:
            sink.add_metadata(RECORD_METADATA, loss_metadata(loss))
    return dst


def test_a_states_only_recording_imports_with_inferred_actions(recordings, tmp_path: Path) -> None:
    """A recording without /commands: ``mtm import-mcap`` refuses it in one line, and with
    ``--relabel-actions MODEL`` writes the model's inverse-dynamics actions, marked as inferred."""
    import h5py

    from mtm_runtime.policy import Policy
    from mtm_runtime.training.relabel import infer_episode
    from mtm_runtime.training.sources import load_episodes

    tmp, a, _, _ = recordings
    states_only = _copy_with_loss(a.record_path, tmp_path / "states_only.mcap", None, drop=("/commands",))
    run = [sys.executable, "-m", "mtm_runtime.cli", "import-mcap", str(states_only), "--task", "reacher"]
    out = subprocess.run(run + ["-o", str(tmp_path / "no.hdf5")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--relabel-actions" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no.hdf5").exists()
    ckpt = str(tmp / "ckpt")
    out = subprocess.run(run + ["-o", str(tmp_path / "d.hdf5"), "--relabel-actions", ckpt], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"actions of 2 of 2 episode(s) inferred by {ckpt}" in out.stdout
    with h5py.File(tmp_path / "d.hdf5") as f:
        assert f["infos/action_inferred"][:].all() and f["infos/action_present"][:].all()
        assert f["metadata"].attrs["actions_inferred_by"] == ckpt and f["metadata"].attrs["episodes_inferred"] == 2
    policy = Policy.load(ckpt, mode="bc")
    eps = load_episodes(tmp_path / "d.hdf5")
    assert [e.length for e in eps] == [50, 50]
    for ep in eps:   # the file's actions are the model's inverse dynamics of the recorded states
        np.testing.assert_allclose(ep["actions"], infer_episode(policy, ep["states"].astype(np.float32)), atol=1e-5)


def test_import_and_compare_report_recorded_loss(recordings, tmp_path: Path) -> None:
    _, a, b, _ = recordings
    none_missed = {t: dict(r, missed=0, missed_at_start=0) for t, r in a.loss.items()}
    loss = dict(none_missed, **{"/commands": dict(none_missed["/commands"], missed=2)})
    lossy = _copy_with_loss(a.record_path, tmp_path / "lossy.mcap", loss)
    clean = _copy_with_loss(a.record_path, tmp_path / "clean.mcap", none_missed)
    run = [sys.executable, "-m", "mtm_runtime.cli"]
    out = subprocess.run(run + ["import-mcap", str(lossy), "--task", "reacher", "-o", str(tmp_path / "d.hdf5")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "WARNING: the recorder missed 2 messages (/commands 2)" in out.stderr
    clean = subprocess.run(run + ["import-mcap", str(clean), "--task", "reacher", "-o", str(tmp_path / "e.hdf5")],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0 and "the recorder missed no messages" in clean.stdout and not clean.stderr
    cmp = subprocess.run(run + ["compare-rollouts", str(lossy), b.record_path, "--png", str(tmp_path / "c.png"),
                                "--json", str(tmp_path / "c.json")], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert cmp.returncode == 0, cmp.stderr
    assert "WARNING: A: the recorder missed 2 messages" in cmp.stderr
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["recorded_loss"]["a"]["/commands"]["missed"] == 2 and res["recorded_loss"]["b"] == b.loss


def test_record_loss_benchmark_quick_json_schema(ros_env, tmp_path: Path) -> None:
    """benchmarks/record_loss.py end to end at small size (its busy loops included); counts not asserted."""
    out = tmp_path / "loss.json"
    r = subprocess.run([sys.executable, "benchmarks/record_loss.py", "--quick", "--duration", "2", "--json", str(out),
                        "--work-dir", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["cpu_hog_processes"] >= 1 and res["machine"]["cores"] and res["launch_exit_code"] == 0
    assert set(res["lost_total"]) == {"recorder_count", "recorder_gaps_after_first_message", "recorder_at_start_up",
                                      "independent"}
    topics = res["topics"]
    assert topics["/observation"]["published"] == topics["/joint_states"]["published"] == 1000
    assert {"received", "missed_by_recorder", "missed_at_start", "lost_independent"} <= set(topics["/observation"])
    assert "published" in topics["/commands"] and set(res["target"]) >= {"lost_per_topic", "met"}
