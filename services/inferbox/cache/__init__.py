"""The response cache: answers of opted-in models kept in their own Redis and served again.

``key`` derives the key of an answer (the exact model version, the inputs' names, datatypes,
shapes and bytes, the requested outputs, the namespace); ``entry`` is the stored value's
layout; ``client`` is the hot path's lookup and insert (bounded by a timeout, never failing a
call); ``generations`` is the registry's side, which makes a version's stored answers
unservable when the version is unloaded, loaded, reconfigured or deleted.
"""
