"""`python -m r1jax ...` is the `r1jax` console script."""

import sys

from r1jax.rl.cli.main import main

sys.exit(main())
