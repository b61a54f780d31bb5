"""``modelkitfs prefetch``: fill the cache ahead of mounts, with a progress bar on a terminal
(rich: its width follows the terminal, one bar with bytes, rate and time left, and a line per
layer as it finishes) and nothing but the summary anywhere else."""

from __future__ import annotations

import argparse
import os
import sys

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from modelkitfs.cache import default_cache_dir
from modelkitfs.cli.output import human
from modelkitfs.cli.parser import Commands, kit_arguments, options_from
from modelkitfs.session import prefetch as fill


def add(commands: Commands) -> None:
    p = commands.add("prefetch", run_prefetch)
    p.add_argument("reference", metavar="REFERENCE")
    kit_arguments(p)


class _Bar:
    """The rich progress bar, on standard error, only when that is a terminal."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.shown = 0

    def __enter__(self) -> _Bar:
        if self.console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self.bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def __call__(self, state: fill.Progress) -> None:
        if self.bar is None:
            return
        if self.task is None:
            self.task = self.bar.add_task("prefetch", total=state.total_bytes)
        for number, layer in enumerate(state.layers_done[self.shown :], self.shown + 1):
            self.bar.console.print(
                f"layer {number}/{state.layers} {layer.kind} {layer.path or '.'} "
                f"({human(layer.size)}) cached and verified",
                highlight=False,
                markup=False,
            )
        self.shown = len(state.layers_done)
        self.bar.update(
            self.task,
            completed=state.bytes_done,
            description=f"layer {min(self.shown + 1, state.layers)}/{state.layers}",
        )


def run_prefetch(args: argparse.Namespace) -> None:
    """fill the cache with a ModelKit ahead of mounts

    Download and verify REFERENCE (or the part --filter selects) into the shared cache, so
    later mounts on this machine read without the network.

    examples:
      modelkitfs prefetch {KIT}
      modelkitfs prefetch -f model --cache-dir /var/cache/modelkitfs {KIT}
    """
    options = options_from(args)
    options = options.replace(cache_dir=os.path.abspath(options.cache_dir or default_cache_dir()))
    with _Bar() as bar:
        result = trio.run(fill.prefetch, args.reference, options, bar)
    before = (
        f"{human(result.cached_before)} of it was cached already"
        if result.cached_before
        else "none of it was cached"
    )
    print(
        f"prefetched {result.reference}: {human(result.total_bytes)} in {result.layers} "
        f"layers, verified, into {options.cache_dir} ({before}; "
        f"{human(result.downloaded)} downloaded)"
    )
    sys.stdout.flush()
