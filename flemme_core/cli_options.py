"""Click declarations that several commands share, so that a flag means one thing everywhere.

``flemme train``, ``flemme compare`` and ``flemme demo`` start from the same kind of YAML
file, read ``--data`` the same way and write into an ``--output``/``-o`` folder with the same
``--quiet``/``-q`` switch; declaring those once keeps their names, short forms and types
from drifting apart. Each command still says in its own words what the flag means for it.
Import-cheap (click only): ``flemme --help`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def yaml_file_argument(name: str) -> Decorator:
    """The optional YAML file a command starts from (train's config, compare's study); flags override it."""
    return click.argument(name, required=False, type=click.Path(dir_okay=False))


def data_option(text: str) -> Decorator:
    """``--data``: a preset, a datalist .json or IMAGES:LABELS (read by ``data.sources.data_argument``)."""
    return click.option("--data", help=text)


def output_option(text: str) -> Decorator:
    """``--output``/``-o``: the folder the command writes (a run folder, a study folder)."""
    return click.option("--output", "-o", help=text)


def quiet_option(text: str) -> Decorator:
    """``--quiet``/``-q``: no progress lines; what the command reports at the end is still printed."""
    return click.option("--quiet", "-q", is_flag=True, help=text)
