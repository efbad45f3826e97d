"""
raftkv: a fault-tolerant, replicated key-value store built on Raft and Twisted.
"""

__version__ = "0.1.0"
