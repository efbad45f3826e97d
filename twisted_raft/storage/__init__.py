"""
Durable storage for Raft: the write-ahead log, the hard state and the data
dir's identity.  Everything returns Deferreds; blocking disk work runs on one
writer thread.
"""
