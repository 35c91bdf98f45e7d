"""`python -m msgbus_sdk` runs the `msgbus` command."""

import sys

from .cli import main

sys.exit(main())
