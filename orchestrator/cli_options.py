"""Options that several commands share, spelt once so that they read the same.

`--playbooks` names the folder of playbooks and its workspace file (or
REFERLOOP_PLAYBOOKS); `--events` one or more raw exports, Mixpanel's or
Amplitude's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

DEFAULT_PLAYBOOKS = Path("playbooks")
EXPORT_HELP = (
    "A raw export of Mixpanel's or Amplitude's Export API (JSON lines, gzipped "
    "or not, or Amplitude's zip); repeatable."
)

Command = TypeVar("Command", bound=Callable[..., Any])


def playbooks_folder(why: str) -> Callable[[Command], Command]:
    """`--playbooks FOLDER` as `folder`, an existing folder; `why` says what the
    command reads there."""
    return click.option(
        "--playbooks",
        "folder",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        envvar="REFERLOOP_PLAYBOOKS",
        default=DEFAULT_PLAYBOOKS,
        show_default=True,
        help=why,
    )


def export_files() -> Callable[[Command], Command]:
    """`--events FILE`, repeatable, as `exports`: existing files."""
    return click.option(
        "--events",
        "exports",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=EXPORT_HELP,
    )


def vendor_option() -> Callable[[Command], Command]:
    """`--vendor auto|mixpanel|amplitude`: whose raw export to fetch."""
    return click.option(
        "--vendor",
        type=click.Choice(["auto", "mixpanel", "amplitude"]),
        default="auto",
        show_default=True,
        help="Whose export to fetch; auto: Mixpanel when its service account is "
        "set, else Amplitude when its secret key is.",
    )
