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
    the version and torrent-file commands.
    """


@main.command()
def version() -> None:
    """Print muppet-sync's version."""
    try:
        text = importlib.metadata.version("muppet")
    except importlib.metadata.PackageNotFoundError:
        text = "unknown"
    click.echo(f"muppet-sync {text}")


@main.command("torrent-file")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Where to write the .torrent file.")
@click.option("--tracker", "trackers", multiple=True, metavar="URL",
              help="Tracker announce URL to put in the torrent (repeatable).")
def torrent_file(path: str, output: str, trackers: tuple[str, ...]) -> None:
    """Make the BitTorrent (v1) torrent of a local file, the way `seed` does.

    Prints the info-hash. Any BitTorrent client can then fetch the file from a
    seeder of it.
    """
    from .errors import SyncError
    from .torrent import info_hash_hex, make_torrent

    try:
        data = make_torrent(path, trackers)
    except SyncError as e:
        raise click.ClickException(str(e)) from None
    with open(output, "wb") as f:
        f.write(data)
    click.echo(info_hash_hex(data))


if __name__ == "__main__":
    main(prog_name="muppet-sync")
