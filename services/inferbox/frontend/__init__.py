"""What the front ends share, below each of them: the HTTP API (``inferbox.api``) and the gRPC
server (``inferbox.grpc``) open the same services (``wiring``), answer the same documents
(``documents``), probe the same dependencies for readiness (``health``), audit control-plane
changes the same way (``auditing``) and id, log and count calls alike (``calls``)."""
