"""``python -m elmrec`` (and ``torchrun -m elmrec``): the command line."""

import sys

from .cli import main

sys.exit(main())
