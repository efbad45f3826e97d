"""
Watches on the wire, both ends: the encoding of the events a
L{commands.WatchEvents} carries, and L{WatchReceiver}, the client side's
responders to the commands a node pushes.

An event is, all integers big-endian::

  kind u8 (1 put, 2 delete) | key length u16 | key (UTF-8) | mod_revision u64
  put only: create_revision u64 | version u64 | value length u32 | value

and a call's C{events} is its events one after the other (a L{BigBytes}:
values of up to 1 MiB travel in 64 KiB chunks).  A delete has no value,
C{create_revision} and C{version} 0, as L{kvrecords.Event} says.
"""

import struct

from twisted.protocols import amp

from twisted_raft.kvrecords import DELETE_EVENT, PUT_EVENT, Event
from twisted_raft.rpc.commands import InvalidArgument, WatchCancelled, WatchEvents

_PUT, _DELETE = 1, 2
_HEAD = struct.Struct(">BH")
_REVISION = struct.Struct(">Q")
_PUT_TAIL = struct.Struct(">QQI")

EVENT_OVERHEAD = _HEAD.size + _REVISION.size + _PUT_TAIL.size
"""The most bytes an event's encoding adds to its key and value."""


def encodeEvent(event):
    """One L{Event} as bytes."""
    key = event.key.encode("utf-8", "surrogatepass")
    if event.type == DELETE_EVENT:
        return _HEAD.pack(_DELETE, len(key)) + key + _REVISION.pack(event.mod_revision)
    value = event.value
    return b"".join((
        _HEAD.pack(_PUT, len(key)), key, _REVISION.pack(event.mod_revision),
        _PUT_TAIL.pack(event.create_revision, event.version, len(value)), value,
    ))


def encodeEvents(events):
    return b"".join(encodeEvent(e) for e in events)


def decodeEvents(data):
    """
    The L{Event}s of a call's C{events}, in order.

    @raise ValueError: C{data} is truncated, has trailing bytes, an
        unknown kind or a key that is not UTF-8.
    """
    events = []
    pos, end = 0, len(data)
    try:
        while pos < end:
            kind, klen = _HEAD.unpack_from(data, pos)
            pos += _HEAD.size
            if pos + klen > end:
                raise ValueError("truncated key")
            key = data[pos:pos + klen].decode("utf-8")
            pos += klen
            (mod,) = _REVISION.unpack_from(data, pos)
            pos += _REVISION.size
            if kind == _DELETE:
                events.append(Event(DELETE_EVENT, key, None, 0, mod, 0))
                continue
            if kind != _PUT:
                raise ValueError(f"unknown event kind {kind}")
            create, version, vlen = _PUT_TAIL.unpack_from(data, pos)
            pos += _PUT_TAIL.size
            if pos + vlen > end:
                raise ValueError("truncated value")
            events.append(Event(PUT_EVENT, key, data[pos:pos + vlen], create, mod, version))
            pos += vlen
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed events: {e}") from None
    return events


class WatchReceiver(amp.CommandLocator):
    """
    Mix into a client's L{amp.AMP} (before it): the responders to the
    commands a node pushes for the watches open on this connection.

    C{watchHandlers} maps a watch_id to its handler, which has
    C{watchEvents(events, nextRevision, continues)} (the events as bytes;
    returns C{None} or a Deferred: the node is answered once it fires) and
    C{watchCancelled(code, compactRevision, description)}.  A call for a
    watch_id with no handler is answered INVALID_ARGUMENT, which ends that
    watch at the node.
    """

    watchHandlers = None

    def _watchHandler(self, watch_id):
        handlers = self.watchHandlers
        handler = handlers.get(watch_id) if handlers else None
        if handler is None:
            raise InvalidArgument(f"no watch {watch_id} on this connection")
        return handler

    def addWatchHandler(self, watchId, handler):
        if self.watchHandlers is None:
            self.watchHandlers = {}
        self.watchHandlers[watchId] = handler

    def removeWatchHandler(self, watchId, handler):
        handlers = self.watchHandlers
        if handlers and handlers.get(watchId) is handler:
            del handlers[watchId]

    @WatchEvents.responder
    def _watchEvents(self, watch_id, events, next_revision, revision_continues=None):
        handler = self._watchHandler(watch_id)
        d = handler.watchEvents(events, next_revision, bool(revision_continues))
        if d is None:
            return {}
        return d.addCallback(lambda _: {})

    @WatchCancelled.responder
    def _watchCancelled(self, watch_id, code, compact_revision=None, description=None):
        handler = self._watchHandler(watch_id)
        handler.watchCancelled(code, compact_revision, description)
        return {}
