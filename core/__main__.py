"""`python -m core ...`: the command line lives in core/cli.py."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
