#!/usr/bin/env python
"""Screenshot NNI's dashboard: a thin wrapper of ``python -m nni_splitting.nni.screenshot`` (see its -h)."""
import sys

from nni_splitting.nni.screenshot import main

if __name__ == "__main__":
    sys.exit(main())
