"""``mtm import-mcap FILE.mcap --task reacher -o data.hdf5``: recorded rollouts -> our HDF5 dataset.

See ``training/mcap_import.py`` for the pairing of states with commands and the episode
boundaries. A recording without /commands (states only) imports with ``--relabel-actions MODEL``:
the model's inverse dynamics fills the actions, marked ``infos/action_inferred`` in the file. The
result loads with ``mtm_runtime.training.loaders.load_episodes`` and trains with ``mtm train``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", type=Path, help="an .mcap file from mtm record / mtm rollout")
    parser.add_argument("--task", default="reacher", help="task the recording comes from (sets the widths)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output .hdf5 path")
    parser.add_argument("--relabel-actions", default="", metavar="MODEL",
                        help="a recording without /commands: fill its actions with MODEL's inverse dynamics "
                             "(checkpoint or .onnx; marked infos/action_inferred in the file)")


def main(args: argparse.Namespace) -> int:
    from mtm_runtime.integrity import CheckpointError
    from mtm_runtime.recording import RecordingError
    from mtm_runtime.recording_loss import loss_note
    from mtm_runtime.training.mcap_import import import_to_hdf5
    from mtm_runtime.training.relabel import load_labeller

    try:
        labeller = load_labeller(args.relabel_actions) if args.relabel_actions else None
        path, rep = import_to_hdf5(args.recording, args.task, args.output, labeller, args.relabel_actions)
    except (RecordingError, KeyError, CheckpointError, FileNotFoundError) as e:
        print(f"mtm import-mcap: {e}", file=sys.stderr)
        return 2
    notes = [loss_note(rep.recorded_loss)]
    if rep.recorded_loss and any(r["missed"] for r in rep.recorded_loss.values()):
        print(f"mtm import-mcap: WARNING: {notes[0]}", file=sys.stderr)
    if rep.dropped_partial_first:
        notes.append("dropped a first episode cut by the start of the recording")
    if rep.truncated_last:
        notes.append("kept the last, unfinished episode as truncated")
    if rep.held:
        notes.append(f"{rep.held} steps had no command of their own (previous action held)")
    if args.relabel_actions and rep.commands_recorded:
        notes.append("the recording has /commands: no action was inferred (--relabel-actions fills only a recording without them)")
    if not rep.commands_recorded:
        notes.append(f"no /commands recorded: actions of {rep.inferred_episodes} of {rep.episodes} episode(s) "
                     f"inferred by {args.relabel_actions}")
    print(f"wrote {path}: {rep.episodes} episodes, {rep.steps} steps, command pairing by {rep.pairing}"
          + ("; " + "; ".join(notes) if notes else ""))
    return 0
