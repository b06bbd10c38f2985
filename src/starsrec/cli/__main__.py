"""`python -m starsrec.cli ...` (and `torchrun -m starsrec.cli ...`): the `starsrec` command."""

import sys

from starsrec.cli.commands import main

sys.exit(main())
