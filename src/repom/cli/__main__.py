"""``python -m repom.cli``."""

import sys

from repom.cli import main

sys.exit(main())
