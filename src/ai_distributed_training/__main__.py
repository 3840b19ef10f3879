"""``python -m ai_distributed_training`` is the ``adt`` command."""

import sys

from .cli import main

sys.exit(main())
