"""`python -m retriever.cli ...`: the `chunkless` command from a source checkout or a subprocess."""

import sys

from retriever.cli import main

sys.exit(main())
