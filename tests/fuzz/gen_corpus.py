#!/usr/bin/python3
"""Write the seed corpora of the fuzz targets into tests/fuzz/corpus/<name>/: a handful of
real-looking inputs each, in the framing each target reads (a selector byte, then the
bytes). Deterministic: running it again rewrites the same files.
    /usr/bin/python3 tests/fuzz/gen_corpus.py"""
import hashlib
import importlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO_DIR = os.path.join(ROOT, "proto")
T0 = 1800000000000  # a window boundary, as the unit tests use


def load_protos():
    out = tempfile.mkdtemp(prefix="eddy-fuzz-pb-")
    subprocess.run(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", "eddy/v1/eddy.proto",
                    "eddy/v1/store.proto", "eddy/v1/state.proto"], check=True)
    for d in ("eddy", "eddy/v1"):
        open(os.path.join(out, d, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    mods = [importlib.import_module(f"eddy.v1.{m}_pb2") for m in ("eddy", "store", "state")]
    shutil.rmtree(out)
    return mods


pb, store, state = load_protos()


def load_reflection():
    """reflection_pb2 (v1) and the served descriptor set, as the build writes it. The proto
    is compiled under another path: "grpc.reflection" would clash with grpcio's package."""
    out = tempfile.mkdtemp(prefix="eddy-fuzz-refl-")
    src = os.path.join(out, "src", "eddy_fuzz_reflection")
    os.makedirs(src)
    shutil.copy(os.path.join(PROTO_DIR, "grpc", "reflection", "v1", "reflection.proto"), src)
    subprocess.run(["protoc", f"-I{out}/src", f"--python_out={out}",
                    "eddy_fuzz_reflection/reflection.proto"], check=True)
    open(os.path.join(out, "eddy_fuzz_reflection", "__init__.py"), "a").close()
    served = sorted(os.path.relpath(os.path.join(d, f), PROTO_DIR)
                    for top in ("eddy/v1", "grpc") for d, _, fs in os.walk(os.path.join(PROTO_DIR, top))
                    for f in fs if f.endswith(".proto"))
    subprocess.run(["protoc", f"-I{PROTO_DIR}", "--include_imports",
                    f"--descriptor_set_out={out}/set.pb", *served], check=True)
    with open(f"{out}/set.pb", "rb") as f:
        set_bytes = f.read()
    sys.path.insert(0, out)
    mod = importlib.import_module("eddy_fuzz_reflection.reflection_pb2")
    sys.path.remove(out)
    shutil.rmtree(out)
    return mod, set_bytes


refl, served_set = load_reflection()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def event(i, etype=pb.EVENT_TYPE_VIEW, **kw):
    e = pb.Event(event_id=f"e-{i}", user_id=f"u-{i % 3}", session_id="s-1",
                 timestamp_ms=T0 + i * 1000, event_type=etype, product_id=f"p-{i % 5}",
                 category="shoes", brand="acme", price=19.5 + i)
    for k, v in kw.items():
        setattr(e, k, v)
    return e


def decayed(bucket=7, cur=65536, prev=0):
    return store.Decayed(bucket=bucket, cur=cur, prev=prev)


def user_model():
    m = store.UserModel(price_min=9.5, price_max=120.0, last_ts=T0 + 5000, events=12)
    for name in ("books", "shoes"):
        m.categories.add(name=name, score=decayed())
    m.brands.add(name="acme", score=decayed(cur=131072))
    m.price_sum.CopyFrom(decayed(cur=65536 * 30))
    m.price_n.CopyFrom(decayed(cur=65536 * 2))
    m.views.add(id="p-1", category="shoes", ts=T0 + 4000, event_id="e-4")
    m.views.add(id="p-2", category="books", ts=T0 + 3000, event_id="e-3")
    m.searches.add(id="red shoes", ts=T0 + 2000, event_id="e-2")
    m.purchases.add(id="p-3", category="shoes", ts=T0 + 1000, event_id="e-1")
    m.cart.add(product_id="p-1", category="shoes", ts=T0 + 4500, event_id="e-5", in_cart=True)
    return m


def product_state():
    ps = store.ProductState(category="shoes", brand="acme", price=19.5, last_ts=T0,
                            category_indexed="shoes", price_ts=T0, category_ts=T0, brand_ts=T0)
    ps.popularity.CopyFrom(decayed())
    ps.neighbours.add(product_id="p-2", score=decayed(cur=3 * 65536), category="books")
    ps.neighbours.add(product_id="p-4", score=decayed(bucket=6, cur=1, prev=2))
    return ps


def stage2_batch(src=3, seq=41):
    b = store.Stage2Batch(source_partition=src, source_seq=seq)
    b.updates.add(product_id="p-1", category="shoes", brand="acme", price=19.5,
                  event_type=pb.EVENT_TYPE_VIEW, ts=T0, window_start=T0)
    b.updates.add(product_id="p-2", event_type=pb.EVENT_TYPE_PURCHASE, ts=T0 + 1, late=True)
    b.pairs.add(from_product="p-1", to_product="p-2", ts=T0 + 1, weight=2.0, to_category="books")
    return b


def log_records():
    return [store.LogRecord(event=event(1)),
            store.LogRecord(idle_watermark=T0),
            store.LogRecord(erased=store.ErasedEvent(event_id="e-9", timestamp_ms=T0)),
            store.LogRecord(stage2=stage2_batch()),
            store.LogRecord(delete_user=store.DeleteUserRecord(user_id="u-1", ts=T0)),
            store.LogRecord(outbox_done=store.OutboxDone(source_seqs=[4, 5], ts=T0))]


def framed(sel, msg):
    return bytes([sel]) + (msg if isinstance(msg, bytes) else msg.SerializeToString())


def public_request():
    ingest = pb.IngestRequest(events=[event(1), event(2, pb.EVENT_TYPE_PURCHASE),
                                      event(3, pb.EVENT_TYPE_SEARCH, search_query="red shoes",
                                            product_id="")])
    ingest.events[0].metadata["page"] = "home"
    bad = pb.IngestRequest(events=[event(4, user_id=""), event(5, price=-1.0),
                                   event(6, timestamp_ms=0), event(7, event_type=0)])
    ctx = pb.Context(current_page="product", current_product="p-1", shopping_cart=["p-2"])
    return [framed(0, ingest), framed(0, bad),
            framed(1, pb.RecommendRequest(user_id="u-1", context=ctx, max_recommendations=5)),
            framed(1, pb.RecommendRequest()),
            framed(2, pb.GetUserProfileRequest(user_id="u-1")),
            framed(3, pb.TopProductsRequest(category="shoes", start_ms=T0, end_ms=T0 + 60000,
                                            event_type=pb.EVENT_TYPE_PURCHASE, limit=10)),
            framed(3, pb.TopProductsRequest(start_ms=T0, end_ms=T0 - 1)),
            framed(4, pb.EventCountsRequest(user_id="u-1", start_ms=T0, end_ms=T0 + 60000)),
            framed(5, pb.DeleteUserRequest(user_id="u-2"))]


def replica_answer(sign=True):
    d = state.ReplicaPartitionData(partition=3, epoch=2, from_seq=10, next_seq=14,
                                   log_end=20, high_watermark=12)
    for i, r in enumerate(log_records()[:3]):
        seq = 10 + i
        data = r.SerializeToString()
        crc = crc32c(data, crc32c(struct.pack("<Q", seq))) if sign else 0
        d.records.add(seq=seq, record=data, crc32c=crc)
    return state.ReplicaFetchResponse(partitions=[d, state.ReplicaPartitionData(
        partition=4, epoch=2, from_seq=7, next_seq=7, log_truncated=True)])


def state_request():
    fwd = state.ForwardRequest(batches=[stage2_batch(), stage2_batch(5, 9)], partitions=[1, 2])
    apply_req = state.ApplyRequest()
    pe = apply_req.partitions.add()
    pe.partition = 1
    pe.events.extend([event(1), event(2)])
    return [framed(0, fwd), framed(0, state.ForwardRequest(batches=[stage2_batch()])),
            framed(1, replica_answer()), framed(2, replica_answer(sign=False)),
            framed(3, apply_req),
            framed(4, state.UserRequest(recommend=pb.RecommendRequest(user_id="u-1"))),
            framed(14, state.ReplicaFetchRequest(follower="n-2", max_wait_ms=500, partitions=[
                state.ReplicaFetchPartition(partition=3, epoch=2, next_seq=10)]))]


def store_values():
    return [framed(0, user_model()), framed(0, store.UserModel()), framed(1, product_state()),
            framed(2, decayed()), framed(3, store.Counts(view=3, purchase=1, category="shoes")),
            framed(4, stage2_batch())] + \
        [framed(5, r) for r in log_records()] + \
        [framed(6, store.Stage2Marks(next_seq=[0, 12, 7])),
         framed(7, store.PartitionMeta(next_seq=42, max_ts=T0, watermark=T0 - 5000, events=40,
                                       epoch=3, format=1)),
         framed(8, store.Dedup(seq=41, ts=T0))]


def checkpoint(partition, records, seq=42):
    out = bytearray(b"EDDYCKP1" + struct.pack("<IHHqQ", 1, partition, 0, T0, seq))
    for k, v in sorted(records):
        out += struct.pack("<I", len(k)) + k + struct.pack("<I", len(v)) + v
    out += struct.pack("<IQQ", 0, len(records), len(out) + 24)
    out += struct.pack("<I", crc32c(bytes(out)))
    return bytes(out)


def checkpoints():
    def key(p, table, rest):
        return struct.pack(">HB", p, table) + rest
    recs = [(key(3, 15, b""), store.PartitionMeta(next_seq=42, max_ts=T0).SerializeToString()),
            (key(3, 4, b"u-1"), user_model().SerializeToString()),
            (key(3, 8, b"p-1"), product_state().SerializeToString()),
            (key(3, 1, struct.pack(">Q", 41)), log_records()[0].SerializeToString())]
    whole = checkpoint(3, recs)
    return [b"\x00" + whole, b"\x07" + whole, b"\x00" + checkpoint(0, []),
            b"\x01" + checkpoint(3, recs[:2]), b"\x00" + whole[:-9],  # truncated
            b"\x00" + checkpoint(3, [(key(4, 4, b"u-9"), b"x")])]     # another partition's key


def jsonl():
    lines = [{"eventId": "e-1", "userId": "u-1", "sessionId": "s-1", "timestamp": T0,
              "eventType": "view", "productId": "p-1", "category": "shoes", "brand": "acme",
              "price": 19.5, "metadata": {"page": "home", "n": 3, "x": {"a": [1, None]}}},
             {"event_id": "e-2", "user_id": "u-1", "timestampMs": str(T0), "event_type":
              "EVENT_TYPE_PURCHASE", "product_id": "p-1", "price": "19.50"},
             {"eventId": "e-3", "userId": "u-2", "timestamp": T0, "eventType": "Search",
              "searchQuery": "red shoes", "productId": None},
             {"eventId": "e-4", "userId": "u-2", "timestamp": "soon", "eventType": "like"}]
    out = [json.dumps(x).encode() + b"\n" for x in lines]
    return out + [b"   \n", b"{\"eventId\": \"e-5\"} trailing\n", b"[1, 2]\n"]


def kv(key, value, rev=7):
    import base64
    return {"key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value.encode()).decode(),
            "create_revision": str(rev - 2), "mod_revision": str(rev), "version": "2"}


def etcd():
    header = {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437",
              "revision": "9", "raft_term": "2"}
    mp = {"partitions": 4, "version": 3, "owners": ["n-1", "n-2", "", "n-1"],
          "epochs": [2, 1, 0, 5], "replicas": [["n-1", "n-2"], ["n-2"], [], ["n-1"]]}
    node = {"id": "n-1", "roles": ["ingest", "state"], "grpc_addr": "127.0.0.1:7001",
            "metrics_addr": "127.0.0.1:9101", "started_ms": T0, "zone": "a"}
    rng = {"header": header, "kvs": [kv("/eddy/c/map", json.dumps(mp)),
                                     kv("/eddy/c/nodes/n-1", json.dumps(node))], "count": "2"}
    txn = {"header": header, "succeeded": True, "responses": [
        {"response_range": {"header": header, "kvs": [kv("/eddy/c/map", "{}")]}},
        {"response_delete_range": {"header": header, "deleted": "2"}},
        {"response_put": {"header": header}}]}
    txn_failed = {"header": header, "responses": [{"response_range": {"header": header}}]}
    watch = {"result": {"header": header, "events": [
        {"kv": kv("/eddy/c/map", json.dumps(mp), 9)},
        {"type": "DELETE", "kv": {"key": kv("/eddy/c/nodes/n-2", "")["key"], "mod_revision": "10"},
         "prev_kv": kv("/eddy/c/nodes/n-2", json.dumps(node), 8)}]}}
    created = {"result": {"header": header, "created": True}}
    records = [(3, {"partitions": 64, "replication_factor": 2, "min_insync": 1}),
               (4, {"epoch": 3, "leader": "n-1", "isr": ["n-1", "n-2"]}),
               (5, node), (6, mp),
               (7, {"id": "p00003-00000000000000000042.ckp", "seq": 42, "bytes": 4096,
                    "crc": 305419896, "path": "/shared/ckp/p00003-00000000000000000042.ckp",
                    "node": "n-1", "created_ms": T0}),
               (8, {"partition": 3, "from": "n-1", "to": "n-2", "epoch": 2, "phase": "copy",
                    "started_ms": T0})]
    out = [(0, rng), (0, {"header": header}), (1, txn), (1, txn_failed), (2, watch),
           (2, created)] + records
    return [bytes([sel]) + json.dumps(o).encode() for sel, o in out]


def reflection_request():
    R = refl.ServerReflectionRequest
    ext = refl.ExtensionRequest(containing_type="eddy.v1.Event", extension_number=100)
    reqs = [R(list_services="*"), R(file_by_filename="eddy/v1/eddy.proto"),
            R(file_by_filename="eddy/v1/state.proto"), R(file_by_filename="nope.proto"),
            R(file_containing_symbol="eddy.v1.Eddy"),
            R(file_containing_symbol="eddy.v1.Eddy.Recommend"),
            R(file_containing_symbol="eddy.v1.RecommendRequest.user_id"),
            R(file_containing_symbol="eddy.v1.EVENT_TYPE_VIEW"),
            R(file_containing_symbol="eddy.v1.Nope"), R(file_containing_extension=ext),
            R(all_extension_numbers_of_type="eddy.v1.Event"), R(host="h")]
    # a set: the first two files of the served one (grpc/health, eddy/v1/eddy.proto...)
    return [framed(0, r) for r in reqs] + [framed(1, served_set[:4096]), framed(1, served_set)]


CORPORA = {"public_request": public_request, "state_request": state_request,
           "store_values": store_values, "checkpoint": checkpoints, "jsonl": jsonl,
           "etcd_json": etcd, "reflection_request": reflection_request}


def main():
    for name, gen in CORPORA.items():
        d = os.path.join(HERE, "corpus", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for data in gen():
            with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
                f.write(data)
        print(f"{name}: {len(os.listdir(d))} seeds")


if __name__ == "__main__":
    main()
