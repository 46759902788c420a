"""``python -m converter`` is the ``convert`` command."""

import sys

from converter.cli import main

sys.exit(main())
