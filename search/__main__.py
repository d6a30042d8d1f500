"""``python -m search``: the same as the ``search`` command."""

import sys

from search.cli import main

sys.exit(main())
