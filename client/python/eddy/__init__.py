"""Eddy from Python: a thin client of the gRPC API eddy.v1.Eddy.

    from eddy import Client, event
    with Client("127.0.0.1:7070") as eddy:
        eddy.ingest([event("u-7", "view", "p-3")])
        print(eddy.recommend("u-7").items)

The request and response messages are the generated protobuf classes of eddy.v1 (module
eddy.v1.eddy_pb2, also reachable as eddy.pb)."""
from eddy.client import (Client, EddyError, IngestResult, Rejection, Retry, event,
                         EVENT_TYPES, RETRYABLE)
from eddy.v1 import eddy_pb2 as pb

__version__ = "0.1.0"
__all__ = ["Client", "EddyError", "IngestResult", "Rejection", "Retry", "event", "pb",
           "EVENT_TYPES", "RETRYABLE"]
