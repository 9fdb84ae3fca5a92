"""The Eddy client: one gRPC channel to a node, unary calls with a deadline each, retries
of UNAVAILABLE / RESOURCE_EXHAUSTED with exponential backoff (or the delay the server names
in retry-after-ms), and Ingest in batches of at most `batch_size` events.

Threads: a Client may be shared by threads; its event buffer (add/flush) is locked."""
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence

import grpc

from eddy.v1 import eddy_pb2 as pb
from eddy.v1 import eddy_pb2_grpc as pb_grpc

# Codes after which resending the same request is safe and may succeed: the node is
# starting, stopping or overloaded and did not do the work; event ids make a resent Ingest
# batch idempotent anyway (already recorded events come back as duplicates).
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

# event() takes these names (or an EventType value) for event_type.
EVENT_TYPES = {
    "view": pb.EVENT_TYPE_VIEW,
    "click": pb.EVENT_TYPE_CLICK,
    "add_to_cart": pb.EVENT_TYPE_ADD_TO_CART,
    "remove_from_cart": pb.EVENT_TYPE_REMOVE_FROM_CART,
    "purchase": pb.EVENT_TYPE_PURCHASE,
    "search": pb.EVENT_TYPE_SEARCH,
}

DEFAULT_ENDPOINT = "127.0.0.1:7070"


class EddyError(Exception):
    """A call that failed: `code` (grpc.StatusCode), `details` (the server's message),
    `retry_after_ms` (the delay the server named, 0 if none) and `attempts` made."""

    def __init__(self, method, code, details, retry_after_ms=0, attempts=1):
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms
        self.attempts = attempts


@dataclass
class Retry:
    """One retry, as passed to the Client's on_retry callback: the method, the code that
    caused it, the wait before the next attempt and the attempt number (1 = first retry)."""
    method: str
    code: grpc.StatusCode
    delay_s: float
    attempt: int
    retry_after_ms: int


@dataclass
class Rejection:
    """An event the node refused; `index` is its place in the events given to ingest()
    (or added since the last flush)."""
    index: int
    event_id: str
    field: str
    reason: str


@dataclass
class IngestResult:
    """The sum of the answers to the batches sent."""
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: List[Rejection] = field(default_factory=list)
    batches: int = 0

    def _add(self, resp, events, offset):
        self.accepted += resp.accepted
        self.duplicates += resp.duplicates
        self.late += resp.late
        self.batches += 1
        for r in resp.rejected:
            ev = events[r.index] if r.index < len(events) else None
            self.rejected.append(Rejection(offset + r.index, ev.event_id if ev else "",
                                           r.field, r.reason))


def event(user_id: str, event_type, product_id: str = "", *, event_id: Optional[str] = None,
          timestamp_ms: Optional[int] = None, **fields) -> "pb.Event":
    """An eddy.v1.Event. `event_type` is a name of EVENT_TYPES or an EventType value; the
    event id defaults to a random UUID (resending the same Event object is idempotent, a new
    call to event() is a new event) and the time to now. Other fields by keyword:
    session_id, category, brand, price, search_query, metadata (a dict)."""
    if isinstance(event_type, str):
        try:
            event_type = EVENT_TYPES[event_type]
        except KeyError:
            raise ValueError(f"unknown event type {event_type!r}; one of {sorted(EVENT_TYPES)}")
    return pb.Event(event_id=event_id or str(uuid.uuid4()), user_id=user_id,
                    timestamp_ms=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
                    event_type=event_type, product_id=product_id, **fields)


def _read(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def _retry_after_ms(err):
    for k, v in (err.trailing_metadata() or ()):
        if k == "retry-after-ms" and str(v).isdigit():
            return int(v)
    return 0


class Client:
    """A connection to one Eddy node (or a load balancer in front of several).

    endpoint        "host:port"; default $EDDY_ENDPOINT, else 127.0.0.1:7070
    timeout         deadline of each attempt of each call, seconds (default 5)
    retries         retries of UNAVAILABLE / RESOURCE_EXHAUSTED per call (default 5; 0: none)
    backoff         (first, max) wait between attempts, seconds: doubling, with jitter
                    (default 0.1 to 5); a retry-after-ms from the server is waited instead
                    when longer
    batch_size      the most events per Ingest call (default 500; the node refuses batches
                    over its --max-batch)
    token           bearer token ("authorization: Bearer ..." on every call)
    tls_ca          PEM CA of the node's certificate: TLS on; with tls_cert and tls_key (both
                    or neither) a client certificate; tls_server_name: the name checked in
                    the node's certificate (default the endpoint's host)
    on_retry        called with a Retry before each wait (logging, metrics)
    """

    def __init__(self, endpoint: Optional[str] = None, *, timeout: float = 5.0,
                 retries: int = 5, backoff=(0.1, 5.0), batch_size: int = 500,
                 token: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 tls_server_name: Optional[str] = None,
                 on_retry: Optional[Callable[[Retry], None]] = None, channel_options=()):
        if timeout <= 0 or retries < 0 or batch_size < 1:
            raise ValueError("timeout must be > 0, retries >= 0 and batch_size >= 1")
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together")
        self.endpoint = endpoint or os.environ.get("EDDY_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size
        self.on_retry = on_retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        options = list(channel_options)
        if tls_ca:
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            creds = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
            self._channel = grpc.secure_channel(self.endpoint, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.endpoint, options=options)
        self._stub = pb_grpc.EddyStub(self._channel)
        self._lock = threading.Lock()
        self._pending: List[pb.Event] = []

    # -- lifecycle --
    def close(self):
        """Send the events still buffered by add(), then close the channel."""
        try:
            self.flush()
        finally:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- calls --
    def _call(self, method: str, request, timeout: Optional[float]):
        """One unary call with a fresh deadline per attempt, retried on RETRYABLE codes."""
        fn = getattr(self._stub, method)
        first, most = self.backoff
        delay = first
        for attempt in range(self.retries + 1):
            try:
                return fn(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                code = e.code() or grpc.StatusCode.UNKNOWN
                after = _retry_after_ms(e)
                if code not in RETRYABLE or attempt == self.retries:
                    raise EddyError(method, code, e.details() or "", after, attempt + 1) from None
                wait = max(delay * (0.5 + random.random() / 2), after / 1000.0)
                if self.on_retry:
                    self.on_retry(Retry(method, code, wait, attempt + 1, after))
                time.sleep(wait)
                delay = min(delay * 2, most)
        raise AssertionError("unreachable")

    def ingest(self, events: Iterable["pb.Event"], *, timeout: Optional[float] = None) -> IngestResult:
        """Send `events` in batches of at most batch_size, in order; the result sums the
        answers. Raises EddyError when a batch fails after its retries (the batches before
        it were recorded; sending them again is safe: they come back as duplicates)."""
        events = list(events)
        result = IngestResult()
        for off in range(0, len(events), self.batch_size):
            batch = events[off:off + self.batch_size]
            resp = self._call("Ingest", pb.IngestRequest(events=batch), timeout)
            result._add(resp, batch, off)
        return result

    def add(self, ev: "pb.Event") -> Optional[IngestResult]:
        """Buffer one event; when batch_size are buffered they are sent, and the answer is
        returned (None otherwise). On EddyError the events stay buffered for the next try."""
        with self._lock:
            self._pending.append(ev)
            if len(self._pending) < self.batch_size:
                return None
            return self._flush_locked(None)

    def flush(self, *, timeout: Optional[float] = None) -> IngestResult:
        """Send the buffered events now (nothing to send: an empty result)."""
        with self._lock:
            return self._flush_locked(timeout)

    def _flush_locked(self, timeout):
        result = self.ingest(self._pending, timeout=timeout) if self._pending else IngestResult()
        self._pending = []
        return result

    def recommend(self, user_id: str, *, limit: int = 0, session_id: str = "",
                  current_product: str = "", cart: Sequence[str] = (), current_page: str = "",
                  exclude=pb.EXCLUSION_DEFAULT, allow_stale: bool = False,
                  timeout: Optional[float] = None) -> "pb.RecommendResponse":
        """Ranked products for `user_id`, best first (limit 0: the node's default, 10)."""
        ctx = pb.Context(current_page=current_page, current_product=current_product,
                         shopping_cart=list(cart))
        return self._call("Recommend", pb.RecommendRequest(
            user_id=user_id, session_id=session_id, context=ctx, max_recommendations=limit,
            exclude=exclude, allow_stale=allow_stale), timeout)

    def get_user_profile(self, user_id: str, *, allow_stale: bool = False,
                         timeout: Optional[float] = None) -> "pb.GetUserProfileResponse":
        """The user's model; EddyError NOT_FOUND if the node has no state for the user."""
        return self._call("GetUserProfile", pb.GetUserProfileRequest(
            user_id=user_id, allow_stale=allow_stale), timeout)

    def top_products(self, *, category: str = "", start_ms: int = 0, end_ms: int = 0,
                     event_type=pb.EVENT_TYPE_UNSPECIFIED, limit: int = 0,
                     include_open: bool = False, allow_stale: bool = False,
                     timeout: Optional[float] = None) -> "pb.TopProductsResponse":
        """The most interacted-with products over a window range (see eddy.proto)."""
        if isinstance(event_type, str):
            event_type = EVENT_TYPES[event_type]
        return self._call("TopProducts", pb.TopProductsRequest(
            category=category, start_ms=start_ms, end_ms=end_ms, event_type=event_type,
            limit=limit, include_open=include_open, allow_stale=allow_stale), timeout)

    def event_counts(self, *, user_id: str = "", start_ms: int = 0, end_ms: int = 0,
                     include_open: bool = False, allow_stale: bool = False,
                     timeout: Optional[float] = None) -> "pb.EventCountsResponse":
        """Per-window counts by event type, of one user or of all."""
        return self._call("EventCounts", pb.EventCountsRequest(
            user_id=user_id, start_ms=start_ms, end_ms=end_ms, include_open=include_open,
            allow_stale=allow_stale), timeout)

    def delete_user(self, user_id: str, *, timeout: Optional[float] = None) -> "pb.DeleteUserResponse":
        """Remove everything stored about `user_id` (NOT_FOUND: nothing was)."""
        return self._call("DeleteUser", pb.DeleteUserRequest(user_id=user_id), timeout)
