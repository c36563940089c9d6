"""callbridge: a self-hosted, programmable telephony engine."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
