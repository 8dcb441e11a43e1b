"""``python -m detector <command> ...`` is the ``detector`` command."""
import sys

from detector.cli import main

sys.exit(main())
