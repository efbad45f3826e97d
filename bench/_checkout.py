"""
Imported first by every script in this folder: puts this checkout's root
first on C{sys.path}, so that C{python bench/X.py} runs this checkout's
raftkv whether or not a copy is installed.  The node processes the scripts
start get the same root from L{twisted_raft.tools.launcher.environment}.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
