"""`python -m worcr_node` is the `worcr` command."""

import sys

from worcr_node.cli import main

sys.exit(main())
