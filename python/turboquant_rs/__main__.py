"""``python -m turboquant_rs``: the command line (see :mod:`turboquant_rs.cli`)."""

import sys

from .cli import main

sys.exit(main())
