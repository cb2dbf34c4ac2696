"""The HTTP API (Litestar): the V2 data plane."""
