"""The router network's control plane, sans I/O.

Pure state machines: no sockets, threads or event loop, and the time is
always an argument.  The wiring (AMQP links over proton, schema entities,
management views) feeds them what arrives on inter-router and edge links and
sends what they return.  Every input from a peer is untrusted: it is decoded
by ``messages.decode`` into typed messages or refused with ``ProtocolError``.

Modules, in the order they build on each other:

* ``messages``  -- HELLO, RA, LSU, LSR, MAU, MAR: encode to and decode from
  the plain maps an AMQP body carries, with strict validation.
* ``hello``     -- per-link neighbour table driven by the wall clock.
* ``linkstate`` -- our own link state, the link-state database of the other
  interior routers, least-cost paths.
* ``addresses`` -- mobile addresses (local, per remote router, per edge).
* ``routes``    -- the route table snapshot handed to the engine.
* ``sync``      -- "readiness means fully synchronised".
* ``core``      -- one router's control plane composed from the above.
* ``views``     -- ``router.node`` / ``router.address`` management rows.
* ``simulation``-- N cores linked in process on a fake clock (tests, bench).

docs/network.md describes the protocol and what the wiring has to do.
"""
