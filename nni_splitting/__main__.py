"""``python -m nni_splitting``: the same command line as ``nni-splitting`` (:mod:`nni_splitting.cli`)."""
import logging
import sys

from .cli import main

__all__ = ["main"]

logger = logging.getLogger(__name__)

if __name__ == "__main__":
    sys.exit(main())
