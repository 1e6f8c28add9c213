"""`python -m ofaserve.benchmarks.reliability`: see benchmarks/reliability/__init__.py."""
import sys

from ofaserve.benchmarks.reliability.cli import main

if __name__ == "__main__":
    sys.exit(main())
