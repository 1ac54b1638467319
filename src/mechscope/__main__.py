"""``python -m mechscope`` (and ``torchrun -m mechscope``) runs the ``mechscope`` command."""

import sys

from mechscope.cli import main

sys.exit(main())
