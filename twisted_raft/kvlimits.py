"""
The limits on what a key-value log entry may carry: the one place of each.

They are checked when a command is I{encoded} (by the server, before
proposing), never when an entry is decoded or applied, so changing a limit
never makes an old log unappliable.
"""

KiB = 1024
MiB = 1024 * KiB

MAX_KEY_BYTES = 4096
"""A key (and a range's end or C{after} key) is at most this much UTF-8."""

MAX_VALUE_BYTES = 1 * MiB
"""A value is at most this many bytes."""

MAX_TXN_COMPARES = 128
"""A transaction has at most this many compares (etcd's max-txn-ops)."""

MAX_TXN_OPS = 128
"""Each branch (success, failure) of a transaction has at most this many
operations."""

MAX_TXN_BYTES = 2 * MiB + 64 * KiB
"""An encoded transaction is at most this many bytes: room for two values of
L{MAX_VALUE_BYTES} and their keys, like the largest compare-and-set."""

MAX_TXN_RANGE_BYTES = 1 * MiB
"""A range inside a transaction returns at most about this many bytes of
keys and values (at least one key): its result is computed on every node at
apply and may be kept for duplicates; the rest is read with ranges."""
