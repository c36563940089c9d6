"""``python -m engine`` is the ``callbridge`` command."""

import sys

from .cli import main

sys.exit(main())
