"""Allow ``python -m rpushd``."""

import sys

from rpushd.cli import main

sys.exit(main())
