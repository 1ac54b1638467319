"""``python -m mechscope.cli`` runs the ``mechscope`` command."""

import sys

from mechscope.cli import main

sys.exit(main())
