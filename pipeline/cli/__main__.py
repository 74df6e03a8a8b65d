"""`python -m pipeline.cli` is `textserve`."""

import sys

from pipeline.cli import main

sys.exit(main())
