"""
Test support: an in-memory network and a whole simulated cluster on one
L{twisted.internet.task.Clock}, wired through the same core as production.
"""
