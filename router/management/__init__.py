"""AMQP 1.0 management and observability: the ``$management`` agent, the
SASL exchange, the AMQP and HTTP protocol drivers for engine app
connections, the read-only entity rows, Prometheus metrics, liveness,
readiness and the HTTP pages (wired together by ``service.Management``).

The engine owns the sockets; these modules only see the bytes it hands to
the control loop, so nothing here ever blocks a worker. They read the
adaptors only through the views in ``sources.py``.
"""
