"""``python -m histozoom``: the same as the ``histozoom`` command."""

import sys

from .cli import main

sys.exit(main())
