import sys

from ofaserve.export.cli import main

sys.exit(main())
