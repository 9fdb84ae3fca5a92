#!/usr/bin/python3
"""Eddy from Python: send a few events for one user, then ask for recommendations and
the user's profile over the public gRPC API (service eddy.v1.Eddy).

    /usr/bin/python3 eddy_example.py [--endpoint HOST:PORT] [--user ID]
        [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--token TOKEN]

Needs grpcio and protobuf (Debian: python3-grpcio python3-protobuf) and, to generate the
stubs from proto/eddy/v1/eddy.proto, protoc and grpc_python_plugin (Debian:
protobuf-compiler protobuf-compiler-grpc). The stubs are taken from ./gen (written by
generate.sh) when present, else generated into a temporary directory at start.

Exit codes: 0 success, 1 an RPC failed (after retries for Ingest), 2 bad usage or the
stubs could not be generated.
"""
import argparse
import atexit
import importlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
GRPC_PLUGIN = "/usr/bin/grpc_python_plugin"

# Codes after which resending the same Ingest batch is safe and may succeed: the node is
# starting, stopping or overloaded, and did not record the batch; event ids make a resent
# batch idempotent anyway (already recorded events come back as duplicates).
RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED")


def load_stubs(proto_dir):
    """Import eddy_pb2 / eddy_pb2_grpc from ./gen, or generate them into a temp dir."""
    gen = os.path.join(HERE, "gen")
    if not os.path.isfile(os.path.join(gen, "eddy", "v1", "eddy_pb2_grpc.py")):
        gen = tempfile.mkdtemp(prefix="eddy-example-stubs-")
        atexit.register(shutil.rmtree, gen, True)
        cmd = ["protoc", f"-I{proto_dir}", f"--python_out={gen}", f"--grpc_python_out={gen}",
               f"--plugin=protoc-gen-grpc_python={GRPC_PLUGIN}", "eddy/v1/eddy.proto"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            sys.exit("eddy_example: protoc not found (Debian package protobuf-compiler)")
        if r.returncode != 0:
            sys.exit(f"eddy_example: protoc failed: {r.stderr.strip()}")
    sys.path.insert(0, gen)
    return (importlib.import_module("eddy.v1.eddy_pb2"),
            importlib.import_module("eddy.v1.eddy_pb2_grpc"))


def retry_after_ms(e):
    """The delay a tenant quota names (trailing metadata retry-after-ms), or 0."""
    for k, v in (e.trailing_metadata() or ()):
        if k == "retry-after-ms" and str(v).isdigit():
            return int(v)
    return 0


def call_with_retry(grpc, fn, request, timeout, retries, what, metadata=None):
    """fn(request, timeout=..., metadata=...) with a fresh deadline per attempt; retries
    RETRYABLE codes after the delay the server names (a tenant over its quota), else with
    exponential backoff (100 ms doubling up to 5 s, with jitter)."""
    delay = 0.1
    for attempt in range(retries + 1):
        try:
            return fn(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            if code not in RETRYABLE or attempt == retries:
                raise
            wait = max(delay * (0.5 + random.random() / 2), retry_after_ms(e) / 1000.0)
            print(f"{what}: {code} ({e.details()}); retrying in {wait * 1000:.0f} ms "
                  f"({attempt + 1}/{retries})", file=sys.stderr)
            time.sleep(wait)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def sample_events(pb, user, now_ms):
    """A short shopping session: two views, a search, add to cart, a purchase, and one
    invalid event (a view without product_id) to show how rejections come back."""
    run = f"{now_ms:x}"  # event ids unique per run; a retry of this batch reuses them
    session = f"s-{run}"
    base = now_ms - 10_000  # event time: a few seconds ago (not in the future)

    def ev(i, event_type, **kw):
        return pb.Event(event_id=f"{user}-{run}-{i}", user_id=user, session_id=session,
                        timestamp_ms=base + i * 1000, event_type=event_type, **kw)

    return [
        ev(0, pb.EVENT_TYPE_VIEW, product_id="p-kettle", category="kitchen", brand="chefco",
           price=39.0, metadata={"ref": "home"}),
        ev(1, pb.EVENT_TYPE_VIEW, product_id="p-toaster", category="kitchen", brand="acme",
           price=25.5),
        ev(2, pb.EVENT_TYPE_SEARCH, search_query="espresso machine", category="kitchen"),
        ev(3, pb.EVENT_TYPE_VIEW, product_id="p-espresso", category="kitchen", brand="chefco",
           price=129.0),
        ev(4, pb.EVENT_TYPE_ADD_TO_CART, product_id="p-espresso", category="kitchen",
           brand="chefco", price=129.0),
        ev(5, pb.EVENT_TYPE_PURCHASE, product_id="p-espresso", category="kitchen",
           brand="chefco", price=129.0),
        ev(6, pb.EVENT_TYPE_ADD_TO_CART, product_id="p-grinder", category="kitchen",
           brand="chefco", price=45.0),
        ev(7, pb.EVENT_TYPE_VIEW, category="kitchen"),  # invalid: no product_id
    ]


def open_channel(grpc, args):
    """A TLS channel when --tls-ca is given (with the client certificate if any), else
    plaintext."""
    if not args.tls_ca:
        return grpc.insecure_channel(args.endpoint)

    def read(path):
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()
    creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key),
                                         read(args.tls_cert))
    return grpc.secure_channel(args.endpoint, creds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", default=os.environ.get("EDDY_ENDPOINT", "127.0.0.1:7070"),
                    help="node address HOST:PORT (env EDDY_ENDPOINT; default 127.0.0.1:7070)")
    ap.add_argument("--user", default="u-example-py", help="user id (default u-example-py)")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="deadline of each call in seconds (default 5)")
    ap.add_argument("--retries", type=int, default=5,
                    help="Ingest retries on UNAVAILABLE / RESOURCE_EXHAUSTED (default 5)")
    ap.add_argument("--proto-dir", default=PROTO_DIR, help="directory holding eddy/v1/eddy.proto")
    ap.add_argument("--tls-ca", default=os.environ.get("EDDY_TLS_CA", ""),
                    help="PEM CA of the node's certificate: TLS on (env EDDY_TLS_CA)")
    ap.add_argument("--tls-cert", default=os.environ.get("EDDY_TLS_CERT", ""),
                    help="PEM client certificate, for a node that requests or requires one "
                         "(env EDDY_TLS_CERT)")
    ap.add_argument("--tls-key", default=os.environ.get("EDDY_TLS_KEY", ""),
                    help="PEM private key of --tls-cert (env EDDY_TLS_KEY)")
    ap.add_argument("--token", default=os.environ.get("EDDY_TOKEN", ""),
                    help="bearer token, for a node started with --token-file (env EDDY_TOKEN)")
    args = ap.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    try:
        import grpc
    except ImportError:
        sys.exit("eddy_example: no grpcio; use Debian's /usr/bin/python3 with python3-grpcio")
    pb, pb_grpc = load_stubs(args.proto_dir)

    # with --token every call carries "authorization: Bearer <token>"
    md = [("authorization", f"Bearer {args.token}")] if args.token else None
    with open_channel(grpc, args) as channel:
        stub = pb_grpc.EddyStub(channel)
        try:
            # 1. Ingest: one batch; the answer counts what was recorded and lists each
            #    invalid event with its index, field and reason.
            events = sample_events(pb, args.user, int(time.time() * 1000))
            r = call_with_retry(grpc, stub.Ingest, pb.IngestRequest(events=events),
                                args.timeout, args.retries, "Ingest", md)
            print(f"ingest: accepted={r.accepted} duplicates={r.duplicates} late={r.late} "
                  f"rejected={len(r.rejected)}")
            for rej in r.rejected:
                print(f"  rejected #{rej.index} ({events[rej.index].event_id}): "
                      f"field={rej.field} reason={rej.reason}")

            # 2. Recommend, with the page the user is on: neighbours of the current product
            #    and of the cart rank high; cart, purchased and current items never appear.
            #    Viewed items are left out by default; on an empty node they are the only
            #    candidates, so this request lets them back (EXCLUSION_PURCHASED).
            ctx = pb.Context(current_page="product", current_product="p-kettle",
                             shopping_cart=["p-grinder"])
            rec = stub.Recommend(pb.RecommendRequest(user_id=args.user, context=ctx,
                                                     max_recommendations=5,
                                                     exclude=pb.EXCLUSION_PURCHASED),
                                 timeout=args.timeout, metadata=md)
            print(f"recommendations for {args.user}: {len(rec.items)} "
                  f"(cold_start={str(rec.cold_start).lower()})")
            for i, it in enumerate(rec.items, 1):
                print(f"  {i}. {it.product_id} score={it.score:.4f} "
                      f"category={it.category or '-'} reason={it.reason}")

            # 3. The user's profile (NOT_FOUND if the node has no state for the user).
            p = stub.GetUserProfile(pb.GetUserProfileRequest(user_id=args.user),
                                    timeout=args.timeout, metadata=md).profile
        except grpc.RpcError as e:
            code = e.code().name if e.code() else "UNKNOWN"
            print(f"eddy_example: {code}: {e.details()} (endpoint {args.endpoint})",
                  file=sys.stderr)
            return 1

    print(f"profile of {p.user_id}: events={p.event_count} last_update_ms={p.last_update_ms}")
    print("  categories: " + ", ".join(f"{a.name}={a.score:.3f}" for a in p.category_affinities))
    print("  brands: " + ", ".join(f"{a.name}={a.score:.3f}" for a in p.brand_affinities))
    pr = p.price_range
    print(f"  price: min={pr.min:g} max={pr.max:g} mean={pr.mean:.2f}")
    print("  recent views: " + ", ".join(v.product_id for v in p.recent_views))
    print("  recent searches: " + ", ".join(repr(s.query) for s in p.recent_searches))
    print("  purchases: " + ", ".join(v.product_id for v in p.recent_purchases))
    print("  cart: " + ", ".join(v.product_id for v in p.cart))
    return 0


if __name__ == "__main__":
    sys.exit(main())
