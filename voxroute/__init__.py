"""voxroute: a real-time voice agent runtime.

The package is layered, and imports run only downward:

- ``voxroute`` (this folder): the composition root. The CLI (:mod:`voxroute.cli`), the server
  wiring (:mod:`voxroute.runtime`, :mod:`voxroute.server`, :mod:`voxroute.workers`), replay, the demo,
  the pytest plugin (:mod:`voxroute.testing`) and the Pipecat integration.
- ``voxroute.telephony``: the carriers' edges (websocket media streams, SIP, AudioSocket).
- ``voxroute.agent``: the call (turn core, session, ladder, providers, call log, handoff, tools).
- ``voxroute.routing``: the router and its stakes classifier.
- :mod:`voxroute.audio`: the audio codecs and resampler, a leaf every layer may import.
- ``voxroute.emulators``: the providers' and carriers' emulators, for replays, tests and the demo;
  production code imports them only inside the functions that start them.

``agent``, ``telephony``, ``routing`` and ``emulators`` are folders at the repository's top level,
installed as ``voxroute.agent`` and so on (``[tool.setuptools.package-dir]`` in pyproject.toml), so
the package claims no generic top-level name in site-packages. ``tests/test_layers.py`` checks the
direction of every import.
"""

__version__ = "0.1.0"
