"""AMQP 1.0 management and observability: the ``$management`` agent, the
SASL exchange, the AMQP and HTTP protocol drivers for engine app
connections, Prometheus metrics and health checks.

The engine owns the sockets; these modules only see the bytes it hands to
the control loop, so nothing here ever blocks a worker.
"""
