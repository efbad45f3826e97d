"""
C{python -m twisted_raft.bench}, the command line the docs give: it runs
L{twisted_raft.tools.bench}, where the tool lives (also C{raftkv bench}).
"""

import sys

from twisted_raft.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
