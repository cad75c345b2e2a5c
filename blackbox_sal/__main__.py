"""``python -m blackbox_sal``: the command line."""

import sys

from blackbox_sal.cli import main

sys.exit(main())
