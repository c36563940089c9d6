"""The fuzz run: seeded, deterministic generators of hostile SIP messages
(mutations of the public conformance corpora) and SDK WebSocket frames, and
a runner that sends them to a live ``callbridge serve`` and reports answers,
crashes, unhandled exceptions and memory.

- :mod:`fuzz.corpus`: the seed messages (RFC 4475, RFC 5118, PROTOS c07-sip,
  pjsip fuzz seeds) from ``../shared/corpora``.
- :mod:`fuzz.sip`: :class:`~fuzz.sip.SipFuzzer`, one message per call.
- :mod:`fuzz.ws`: :class:`~fuzz.ws.WsFuzzer`, one frame per call.
- :mod:`fuzz.runner`: :func:`~fuzz.runner.run_fuzz` and the report.

``bench/fuzz.py`` is the long run's command line; ``test_fuzz.py`` the
short run in the suite."""
