"""Scale-out on Ray: the same queues, with batches run by Ray actors holding the sessions.

``driver.ray_worker`` follows the catalog and reads the queues like the local worker; each batch
runs on an ``actor.SessionHost`` (one per GPU, or CPU actors) chosen among those holding the
version. ``placement`` applies the local worker's residency rules per actor, ``scaler`` sizes the
pool between a minimum and a maximum by queue wait.
"""
