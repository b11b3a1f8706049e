"""muppet-sync: finished files to the consumer hosts over BitTorrent (docs/sync.md).

* :mod:`sync.cli` - the ``muppet-sync`` command (seed, fetch, status, torrent).
* :mod:`sync.select` - the sans-I/O core: which files to take and release
  (``[[select]]`` rules, the N most recent reference times, expiry, deletion).
* :mod:`sync.run` - what seed and fetch share: follow the index, one task per
  taken file, ``state.json`` and ``status.json``.
* :mod:`sync.seed`, :mod:`sync.fetch` - what taking and releasing a file means
  on the producer's storage host and on a consumer.
* :mod:`sync.follow` - the index connection: calls that wait out outages, the
  event stream followed from the last number handled, catch-up queries.
* :mod:`sync.engine` - the libtorrent session as a Trio object, around it
  :mod:`sync.engine_settings` (what the session is set up with, and why),
  :mod:`sync.alerts` (libtorrent's alerts into what the engine knows),
  :mod:`sync.resume` (resume data on disk), :mod:`sync.torrent_status`
  (one torrent as the engine reports it).
* :mod:`sync.config`, :mod:`sync.torrent`, :mod:`sync.place`,
  :mod:`sync.state`, :mod:`sync.progress`, :mod:`sync.errors`.
"""
