"""
C{python -m twisted_raft.sim}, the command line the docs give: it runs
L{twisted_raft.tools.sim}, where the tool lives (also C{raftkv sim}).
"""

import sys

from twisted_raft.tools.sim import main

if __name__ == "__main__":
    sys.exit(main())
