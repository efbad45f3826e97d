"""
The Raft consensus core.  Nothing in this package opens a socket or a file:
it talks to the world through the interfaces in L{twisted_raft.raft.interfaces}.
"""
