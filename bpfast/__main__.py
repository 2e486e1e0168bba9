"""``python -m bpfast``: the same as the ``bpfast`` command."""
import sys

from .cli import main

sys.exit(main())
