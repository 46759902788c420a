"""``python -m converter`` is the ``convert`` command."""

import sys

from .cli import main

sys.exit(main())
