"""``python -m nni_splitting``: the same command line as ``nni-splitting`` (:mod:`nni_splitting.cli`)."""
import logging
import sys

from .cli import main
from .nni.table import progress_printer

__all__ = ["main"]

logger = logging.getLogger(__name__)

# Transitional: compare._run (to be removed in favour of ``cli``'s compare command) still imports it.
_progress = progress_printer

if __name__ == "__main__":
    sys.exit(main())
