"""``python -m engine`` is the ``callbridge`` command."""

import sys

from engine.cli import main

sys.exit(main())
