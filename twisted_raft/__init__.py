"""
raftkv: a fault-tolerant, replicated key-value store built on Raft and Twisted.
"""

__version__ = "0.1.0"
"""raftkv's version, the one place it is written (setup.py reads it)."""
