"""Which files a seeder or a consumer holds: the sans-I/O core of muppet-sync.

The seed and fetch commands feed every file record they learn of (from the
catch-up queries and from the index's event stream, in any order, any number
of times) to :meth:`Selection.offer`, and call :meth:`Selection.expire` with
the time now and then. Both answer with actions for the caller to carry out:

* :class:`Take` - start holding this file (seed it, or fetch and place it);
* :class:`AddPeer` - a file already held has a new copy served by this peer;
* :class:`Release` - stop holding it (stop seeding; the consumer also deletes
  its copy and marks it deleted in the index), with the reason.

Nothing here awaits, reads a clock or touches the network: the time is an
argument, so the rules (the ``[[select]]`` tables, the N most recent reference
times per product, expiry, deletions) are tested without Trio or a daemon.

A file is held at most once per *data* (``data_id``: one file, whatever the
copies on several backends), and never taken again once released, so a
replayed or late event cannot make a consumer fetch an expired file again.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from muppet.codec import format_time, parse_zoned_time

from .config import Select

__all__ = ["Action", "AddPeer", "FileRef", "Release", "Selection", "Take"]


@attrs.frozen
class FileRef:
    """One data instance (one copy of one file on one backend), as the index
    describes it: the fields muppet-sync uses, from the API's file object."""

    id: int
    data_id: int
    product: str
    reference_time: datetime
    version: int
    name: str
    url: str
    format: str
    backend: str
    size: int
    hash_type: str
    hash: str
    expires: datetime | None = None
    deleted: bool = False
    partial: bool = False
    info_hash: str | None = None
    peer: str | None = None
    time_begin: datetime | None = None
    time_end: datetime | None = None
    variables: tuple[str, ...] = ()
    #: the record that replaced this one (the file was registered again at
    #: its URL): the file lives on under that record
    superseded_by: int | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any], origin: str = "the index") -> FileRef:
        """From the API's file object (files.list, files.get, a file event),
        or the copy of one kept in the state file; ``origin`` says which, for
        error messages.

        Raises KeyError/ValueError/TypeError on a malformed one; a time
        without a zone is malformed (ValueError naming ``origin``, the file
        and the field: "the index: file 7: expires: ... has no time zone").
        """
        file_id = int(data["id"])

        def time(key: str) -> datetime | None:
            text = data.get(key)
            return None if text is None else parse_zoned_time(text, f"{origin}: file {file_id}: {key}")

        reference_time = time("reference_time")
        if reference_time is None:
            raise KeyError("reference_time")
        return cls(
            id=file_id,
            data_id=int(data["data_id"]),
            product=str(data["product"]),
            reference_time=reference_time,
            version=int(data["version"]),
            name=str(data["name"]),
            url=str(data["url"]),
            format=str(data["format"]),
            backend=str(data["backend"]),
            size=int(data["size"]),
            hash_type=str(data.get("hash_type") or "sha256"),
            hash=str(data["hash"]),
            expires=time("expires"),
            deleted=bool(data.get("deleted", False)),
            partial=bool(data.get("partial", False)),
            info_hash=data.get("info_hash"),
            peer=data.get("peer"),
            time_begin=time("time_begin"),
            time_end=time("time_end"),
            variables=tuple(data.get("variables") or ()),
            superseded_by=data.get("superseded_by"),
        )

    def to_api(self) -> dict[str, Any]:
        """Back to the API's shape (for the state file)."""
        return {
            "id": self.id,
            "data_id": self.data_id,
            "product": self.product,
            "reference_time": format_time(self.reference_time),
            "version": self.version,
            "name": self.name,
            "url": self.url,
            "format": self.format,
            "backend": self.backend,
            "size": self.size,
            "hash_type": self.hash_type,
            "hash": self.hash,
            "expires": format_time(self.expires),
            "deleted": self.deleted,
            "partial": self.partial,
            "info_hash": self.info_hash,
            "peer": self.peer,
            "time_begin": format_time(self.time_begin),
            "time_end": format_time(self.time_end),
            "variables": list(self.variables),
            "superseded_by": self.superseded_by,
        }


@attrs.frozen
class Take:
    file: FileRef


@attrs.frozen
class AddPeer:
    data_id: int
    info_hash: str
    peer: str


@attrs.frozen
class Release:
    file: FileRef  # the copy that was taken
    reason: str


Action = Take | AddPeer | Release


@attrs.define
class _Held:
    file: FileRef
    #: live copies of this data known to be served by a peer, by file id
    sources: dict[int, FileRef] = attrs.field(factory=dict)


class Selection:
    """The files one seeder or consumer holds.

    ``selects``: the configuration's ``[[select]]`` tables (a file is selected
    when any one matches its product, format and backend). ``own_backend``: a
    consumer's own service backend; its copies there are never sources, and
    their deletion in the index releases the file. ``need_torrent``: a consumer
    only takes a file once the index has its info-hash (the seeder has made
    and published the torrent); a seeder takes it without.
    """

    def __init__(
        self, selects: Iterable[Select], *, own_backend: str | None = None, need_torrent: bool = False
    ) -> None:
        self.selects = tuple(selects)
        self.own_backend = own_backend
        self.need_torrent = need_torrent
        self.held: dict[int, _Held] = {}
        self.released: set[int] = set()
        #: per product, the reference times seen (sorted) and how many are kept
        self._times: dict[str, list[datetime]] = {}
        self._recent: dict[str, int] = {}
        for select in self.selects:
            for product in select.products:
                self._recent[product] = max(self._recent.get(product, 0), select.recent)

    @property
    def products(self) -> tuple[str, ...]:
        """Every product some select names, sorted."""
        return tuple(sorted(self._recent))

    def recent(self, product: str) -> int:
        return self._recent.get(product, 0)

    def selects_file(self, file: FileRef) -> bool:
        """Whether some ``[[select]]`` matches this copy (as a source)."""
        if file.backend == self.own_backend:
            return False
        for select in self.selects:
            if file.product not in select.products:
                continue
            if select.formats and file.format not in select.formats:
                continue
            if select.backend is not None and file.backend != select.backend:
                continue
            return True
        return False

    def cutoff(self, product: str) -> datetime | None:
        """The oldest reference time of ``product`` still kept, or None while
        fewer than ``recent`` are known."""
        times = self._times.get(product, [])
        keep = self._recent.get(product, 0)
        if keep == 0 or len(times) < keep:
            return None
        return times[-keep]

    def restore(self, file: FileRef) -> None:
        """Hold a file taken before a restart (from the state file), without
        an action."""
        self.held[file.data_id] = _Held(file)
        self._note_time(file.product, file.reference_time)

    def offer(self, file: FileRef, now: datetime) -> list[Action]:
        """A file record, from a query or an event. Returns what to do."""
        if file.backend == self.own_backend and self.own_backend is not None:
            return self._offer_own(file)
        if not self.selects_file(file):
            return []
        actions: list[Action] = []
        if not file.deleted:
            actions += self._note_time(file.product, file.reference_time)
        held = self.held.get(file.data_id)
        if file.deleted:
            if held is not None:
                held.sources.pop(file.id, None)
                if file.id == held.file.id or not held.sources:
                    if file.superseded_by is not None:
                        # registered again (docs/index.md, "Versions"): the
                        # new record's event comes next and is taken afresh
                        actions.append(self._release(file.data_id, "superseded in the index", final=False))
                    else:
                        actions.append(self._release(file.data_id, "deleted in the index"))
            return actions
        cutoff = self.cutoff(file.product)
        if cutoff is not None and file.reference_time < cutoff:
            return actions  # the release, if it was held, came from _note_time
        if file.expires is not None and file.expires <= now:
            if held is not None:
                actions.append(self._release(file.data_id, "expired"))
            return actions
        if file.partial or file.data_id in self.released:
            return actions
        if held is not None:
            if file.peer and file.info_hash and file.id not in held.sources:
                held.sources[file.id] = file
                actions.append(AddPeer(file.data_id, file.info_hash, file.peer))
            elif file.info_hash:
                held.sources[file.id] = file
            return actions
        if self.need_torrent and not file.info_hash:
            return actions  # its torrent is not made yet: a later event brings it
        held = self.held[file.data_id] = _Held(file)
        if file.info_hash:
            held.sources[file.id] = file
        actions.append(Take(file))
        return actions

    def expire(self, now: datetime) -> list[Release]:
        """Release every held file whose ``expires`` has passed."""
        due = [data_id for data_id, held in self.held.items()
               if held.file.expires is not None and held.file.expires <= now]
        return [self._release(data_id, "expired") for data_id in sorted(due)]

    def forget(self, data_id: int, reason: str) -> Release | None:
        """Give up a held file for a reason of the caller's (a failed fetch
        that must not be retried); None when it was not held."""
        if data_id not in self.held:
            return None
        return self._release(data_id, reason)

    # --- internals ----------------------------------------------------------

    def _offer_own(self, file: FileRef) -> list[Action]:
        held = self.held.get(file.data_id)
        if file.deleted and file.superseded_by is not None:
            # Registered again at its URL (docs/index.md, "Versions"): on this
            # host's own backend only this host registers, so the copy lives
            # on under the new record. A files.register retried after the
            # connection dropped during the first one does this (sync.follow,
            # IndexLink.call): releasing would delete the file just placed.
            return []
        if file.deleted and held is not None:
            return [self._release(file.data_id, "its copy on this host was deleted in the index")]
        return []

    def _note_time(self, product: str, reference_time: datetime) -> list[Action]:
        times = self._times.setdefault(product, [])
        index = bisect.bisect_left(times, reference_time)
        if index < len(times) and times[index] == reference_time:
            return []
        times.insert(index, reference_time)
        keep = self._recent.get(product, 0)
        if keep == 0 or len(times) <= keep:
            return []
        # Only the newest `keep` matter from now on: the older ones can never
        # come back into the window.
        del times[: len(times) - keep]
        cutoff = times[0]
        stale = [data_id for data_id, held in self.held.items()
                 if held.file.product == product and held.file.reference_time < cutoff]
        reason = f"older than the {keep} most recent reference times of {product}"
        return [self._release(data_id, reason) for data_id in sorted(stale)]

    def _release(self, data_id: int, reason: str, *, final: bool = True) -> Release:
        """Give up a held file; ``final``: for good (not taken again)."""
        held = self.held.pop(data_id)
        if final:
            self.released.add(data_id)
        return Release(held.file, reason)
