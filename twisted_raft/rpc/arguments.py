"""
AMP argument types raftkv needs beyond Twisted's.
"""

from twisted.protocols import amp

from twisted_raft.rpc.twistedprivate import wireNameToPythonIdentifier

CHUNK = amp.MAX_VALUE_LENGTH  # 65,535 bytes: AMP's limit for one value


class BigBytes(amp.Argument):
    """
    Bytes of any length.  AMP caps one value at 65,535 bytes, so a longer
    string is split into chunks of at most that size, sent under the keys
    C{name}, C{name.2}, C{name.3}, ... in order.  A value that fits travels as
    the plain key C{name}, exactly like L{amp.Bytes}, so small requests look
    the same on the wire as with a plain C{Bytes} argument.

    Decoding never raises on a gap (C{name.3} without C{name.2}): it stops at
    the first missing chunk and records the malformation in
    C{objects["_malformed"]}, so a responder can answer INVALID_ARGUMENT.
    """

    def toBox(self, name, strings, objects, proto):
        obj = self.retrieve(objects, wireNameToPythonIdentifier(name), proto)
        if obj is None:
            if self.optional:
                return
            raise TypeError(f"{name!r} is required")
        if not isinstance(obj, bytes):
            raise TypeError(f"{name!r} must be bytes, not {type(obj).__name__}")
        strings[name] = obj[:CHUNK]
        for n, start in enumerate(range(CHUNK, len(obj), CHUNK), start=2):
            strings[name + b"." + str(n).encode("ascii")] = obj[start : start + CHUNK]

    def fromBox(self, name, strings, objects, proto):
        nk = wireNameToPythonIdentifier(name)
        first = self.retrieve(strings, name, proto)
        if first is None:
            objects[nk] = None
            return
        parts = [first]
        n = 2
        while True:
            more = strings.pop(name + b"." + str(n).encode("ascii"), None)
            if more is None:
                break
            parts.append(more)
            n += 1
        prefix = name + b"."
        if any(k.startswith(prefix) for k in strings):
            objects["_malformed"] = f"chunks of {name.decode('ascii')!r} are not contiguous"
        objects[nk] = b"".join(parts)
