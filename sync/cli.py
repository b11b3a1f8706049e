"""The ``muppet-sync`` command. Its commands (``seed``, ``fetch``) arrive with
the sync issue; for now it only knows its version."""

from __future__ import annotations

import importlib.metadata

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """MUPPET's file sync over BitTorrent.

    \b
    muppet-sync seed    on the producer's storage host: seed finished files
    muppet-sync fetch   on a consumer host: keep the newest files of chosen
                        products on local disk

    Neither is here yet: they arrive with the sync issue. This release has
    only the version command.
    """


@main.command()
def version() -> None:
    """Print muppet-sync's version."""
    try:
        text = importlib.metadata.version("muppet")
    except importlib.metadata.PackageNotFoundError:
        text = "unknown"
    click.echo(f"muppet-sync {text}")


if __name__ == "__main__":
    main(prog_name="muppet-sync")
