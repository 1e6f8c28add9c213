import sys

from ofaserve.compress.cli import main

sys.exit(main())
