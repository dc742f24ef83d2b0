"""``python -m ui``: the tray app."""

import sys

from ui.app import main

sys.exit(main())
