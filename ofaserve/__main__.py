"""`python -m ofaserve` is the `ofaserve` command."""
import sys

from ofaserve.cli import main

sys.exit(main())
