"""argparse value types shared by the subcommands (kept torch-free for `sae --help`)."""

from __future__ import annotations

import argparse


def int_list(text: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16), with an error argparse prints as a usage message."""
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,4,16; got {text!r}") from None
