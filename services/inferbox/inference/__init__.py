"""Inference below any front end: which versions a name serves (``directory``) and whether a
request fits the model it calls (``validation``). The HTTP API, the gRPC server and the job
runner all build on it; it knows nothing of HTTP."""
