"""
C{python -m twisted_raft.chaos}, the command line the docs give: it runs
L{twisted_raft.tools.chaos}, where the tool lives (also C{raftkv chaos}).
"""

import sys

from twisted_raft.tools.chaos import main

if __name__ == "__main__":
    sys.exit(main())
