"""argparse types for the commands' counts, so a bad count is argparse's own one-line error
(exit code 2) before anything runs:

    p.add_argument("--episodes", type=at_least(1), default=10)   # "--episodes 0" -> one line, exit 2
"""
from __future__ import annotations

import argparse
from typing import Callable


def at_least(lowest: int) -> Callable[[str], int]:
    """An integer >= ``lowest``; anything else is ``argparse.ArgumentTypeError`` naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be >= {lowest}, got {value}")
        return value

    parse.__name__ = f"integer >= {lowest}"
    return parse
