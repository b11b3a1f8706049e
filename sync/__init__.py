"""muppet-sync: finished files to the consumer hosts over BitTorrent (issue 5).

What exists (tested building blocks, not yet wired to the index):

* :mod:`sync.config` - seed.toml / fetch.toml -> frozen ``SeedConfig`` /
  ``FetchConfig`` (``Select``, ``PeerPolicy``, ``Listen``), every problem
  reported at once with file, table and key.
* :mod:`sync.torrent` - ``make_torrent`` (v1 only, for aria2/Transmission),
  ``info_hash_hex``, ``torrent_info``.
* :mod:`sync.place` - layout templates (``check_layout``, ``render_layout``,
  refusing paths that escape ``data_dir``), ``verify_and_place`` (SHA-256,
  fsync, rename; nothing left behind on mismatch or a full disk),
  ``run_on_complete``.
* :mod:`sync.engine` - the libtorrent session as a Trio object:
  ``open_engine(EngineSettings)`` -> ``Engine`` with ``seed``, ``fetch``,
  ``add_peers``, ``remove``, ``status``, ``listen_port``; resume data in
  ``state_dir/resume``.
* :mod:`sync.errors` - ``SyncError`` and its kinds.
* ``muppet-sync torrent-file PATH --output FILE`` (:mod:`sync.cli`).

Not here yet: following the index's event stream, selecting data instances
by ``[[select]]``, registering copies and torrents in the index, expiry, the
``seed``/``fetch``/``status``/``torrent`` commands (they need the index API,
issue 3).
"""
