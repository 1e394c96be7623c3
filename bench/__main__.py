"""`python -m bench [flags]`: see `python -m bench --help` and the README's Benchmark section."""

import sys

from bench.harness import main

sys.exit(main())
