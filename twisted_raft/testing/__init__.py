"""
Test support, never imported by production code: an in-memory network and a
whole simulated cluster on one L{twisted.internet.task.Clock}, wired through
the same core as production, and the checkers and fault injectors the tests
use.

    - L{cluster}: a whole cluster (nodes, memory storage, KV state machines,
      network) in one process on one clock and one seed.
    - L{network}: the in-memory network of Raft nodes, with latency and faults.
    - L{scripted}: a transport whose RPCs a test answers by hand.
    - L{invariants}: the seeded fault-injection driver for the core and the
      safety invariants it checks after every step.
    - L{membershipfaults}: the driver's membership faults (add, promote,
      remove, remove the leader, transfer leadership).
    - L{configchecks}: the configuration invariants the driver checks.
    - L{linearizability}: a linearizability checker for client histories.
    - L{proxy}: a blockable TCP proxy for fault injection against real
      processes.
"""
