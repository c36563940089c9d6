"""callbridge: a self-hosted, programmable telephony engine."""

import logging

from engine import native

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# the compiled media modules, when built for these sources (engine/native.py)
native.install()
