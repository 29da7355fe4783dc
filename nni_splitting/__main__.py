"""``python -m nni_splitting``: the same command line as ``nni-splitting`` (:mod:`nni_splitting.nni.cli`)."""
import logging
import sys

from nni_splitting.nni.cli import main

__all__ = ["main"]

logger = logging.getLogger(__name__)

if __name__ == "__main__":
    sys.exit(main())
