"""`python -m bench`: run the benchmarks (see `bench.harness` for the options and output)."""

import sys

from bench.harness import main

sys.exit(main())
