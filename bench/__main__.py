"""`python -m bench`: run the benchmarks (see bench.cli)."""

import sys

from bench.cli import main

sys.exit(main())
