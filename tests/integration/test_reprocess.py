"""docs/design.md §7, reprocessing (eddy reprocess, Eddy.Reprocess): derived state is rebuilt from
the retained log beside the live state and swapped in atomically. Reprocessing with a new
half-life gives state byte-identical to a fresh ingest with that half-life; queries keep
answering during it; events ingested meanwhile are not lost; DeleteUser removes the
checkpoints that held the user (a rebuild from one by name is refused, one from the newest
keeps the user deleted); a log truncated by retention is reported;
bad requests get INVALID_ARGUMENT with a clear message."""
import json
import os
import re
import subprocess
import threading
import time
import unittest

import grpc

import eddylib as L

# Compared byte for byte: every table but LOG, which holds the events as the client
# encoded them (two encodings of one metadata map may order it differently) and which a
# reprocess never rewrites. PRODUCT and COOC are compared too: co-occurrence pairs no
# longer depend on arrival order (see test_determinism.py).
TABLES = ("dedup,dedup_exp,user,user_win,user_log,part_win,product,prod_win,cat_pop,cooc,"
          "late,s2_hw,meta")
HALF_LIFE = "2m"          # far from the defaults (7d, 1d, 7d): every decayed score changes
HALF_LIFE_MS = 120_000
NODE_ARGS = ["--idle-timeout", "0", "--checkpoint-interval", "0"]


def reprocess_rpc(node):
    m = L.pb()
    return node.channel.unary_unary("/eddy.v1.Eddy/Reprocess",
                                    request_serializer=m.ReprocessRequest.SerializeToString,
                                    response_deserializer=m.ReprocessResponse.FromString)


def table_counts(dump):
    tables = {}
    for line in dump.decode().splitlines():
        t = bytes.fromhex(line.split()[0])[2]
        tables[t] = tables.get(t, 0) + 1
    return tables


def assert_product_tables_equal(test, state_nodes, ref, owners):
    """Stop the nodes; the product (stage-2) tables of every state node, each for the
    partitions it leads (`owners`, the map's), together equal the --dev node ref's, byte
    for byte (each table has rows: not trivially equal). Followers' copies are not
    compared: the cluster-wide stage-2 rebuild swaps the leaders' tables outside the log."""
    tables = "product,prod_win,cat_pop,cooc"
    for n in state_nodes:
        n.stop()
    ref.stop()

    def led(node, line):
        return owners[int.from_bytes(bytes.fromhex(line.split()[0])[:2], "big")] == node.id
    rows = sorted(l for n in state_nodes for l in n.dump_state(tables).decode().splitlines()
                  if led(n, l))
    want = sorted(ref.dump_state(tables).decode().splitlines())
    test.assertEqual(len({bytes.fromhex(l.split()[0])[2] for l in want}), 4)
    if rows != want:
        diff = sorted(set(rows) ^ set(want))[:3]
        test.fail(f"product state differs: {len(rows)} vs {len(want)} rows; {diff}")


class Queries(threading.Thread):
    """Recommend and TopProducts in a loop until stopped; records when each was answered
    and every error."""

    def __init__(self, node, users):
        super().__init__(daemon=True)
        self.stub = node.stub
        self.users = users
        self.stop = threading.Event()
        self.answered = []   # monotonic times of OK answers
        self.errors = []

    def run(self):
        m = L.pb()
        i = 0
        while not self.stop.is_set():
            user = self.users[i % len(self.users)]
            i += 1
            try:
                r = self.stub.Recommend(m.RecommendRequest(user_id=user, max_recommendations=5),
                                        timeout=10)
                assert len(r.items) > 0, f"no recommendations for {user}"
                t = self.stub.TopProducts(m.TopProductsRequest(limit=5, include_open=True),
                                          timeout=10)
                assert len(t.products) > 0, "no top products"
                self.answered.append(time.monotonic())
            except (grpc.RpcError, AssertionError) as e:
                self.errors.append(repr(e))


class ReprocessDevTest(unittest.TestCase):
    def test_new_half_life_equals_fresh_ingest_and_queries_keep_answering(self):
        L.require_cli()
        events = L.generate(seed=41, n_users=60, n_products=40, n_categories=4, n_events=8000)
        first, second = events[:6000], events[6000:]
        live = L.start_node(self, args=NODE_ARGS)  # default half-lives, reprocessed below
        fresh = L.start_node(self, args=NODE_ARGS + [
            "--affinity-half-life", HALF_LIFE, "--popularity-half-life", HALF_LIFE,
            "--neighbour-half-life", HALF_LIFE])
        for batch in L.batches(first, [500]):
            self.assertEqual(live.ingest(batch).accepted, len(batch))
        for batch in L.batches(events, [500]):
            self.assertEqual(fresh.ingest(batch).accepted, len(batch))

        m = L.pb()
        users = sorted({e["userId"] for e in events})
        profile = lambda n, u: n.stub.GetUserProfile(m.GetUserProfileRequest(user_id=u), timeout=10)
        # not trivially equal before: the half-lives differ
        self.assertNotEqual(profile(live, users[0]).profile.category_affinities,
                            profile(fresh, users[0]).profile.category_affinities)

        queries = Queries(live, users)
        queries.start()
        L.poll_until(lambda: len(queries.answered) >= 3, 10, what="queries answering before")
        proc = subprocess.Popen([L.require_cli(), "--endpoint", live.endpoint, "-o", "json",
                                 "reprocess", "--all", "--from-start", "--set",
                                 f"half-life={HALF_LIFE}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t_start = time.monotonic()
        # ingest goes on during the rebuild: nothing may be lost by the swap
        ingested = 0
        for batch in L.batches(second, [250]):
            r = live.ingest(batch)
            self.assertEqual((r.accepted, len(r.rejected)), (len(batch), 0))
            ingested += r.accepted
        out, err = proc.communicate(timeout=120)
        t_end = time.monotonic()
        answered_after = len(queries.answered)
        L.poll_until(lambda: len(queries.answered) >= answered_after + 3, 10,
                     what="queries answering after")
        queries.stop.set()
        queries.join(20)
        self.assertEqual(proc.returncode, 0, f"eddy reprocess: {err}")
        res = json.loads(out)
        self.assertEqual(queries.errors, [])
        during = [t for t in queries.answered if t_start <= t <= t_end]
        self.assertGreater(len(during), 0, "no query was answered while the rebuild ran")
        self.assertEqual(ingested, len(second))

        self.assertTrue(res["stage2_rebuilt"])
        self.assertEqual(len(res["partitions"]), 256)
        self.assertEqual(res["first_seq"], 0)
        self.assertGreaterEqual(res["records_replayed"], len(first))
        self.assertLessEqual(res["records_replayed"], len(events))
        self.assertFalse(any(p["log_truncated"] for p in res["partitions"]))
        self.assertEqual(res["parameters"], {"affinity-half-life": HALF_LIFE_MS,
                                             "popularity-half-life": HALF_LIFE_MS,
                                             "neighbour-half-life": HALF_LIFE_MS})
        print(f"\nreprocess of {res['records_replayed']} records: {res['duration_ms']} ms, "
              f"writes paused {res['pause_ms']} ms; {len(during)} queries answered meanwhile")

        # the live node now answers as the fresh one: same profiles (the query side uses the
        # new half-life too), same windows
        for u in users[:10]:
            self.assertEqual(profile(live, u), profile(fresh, u), u)
        req = m.TopProductsRequest(limit=1000, include_open=True)
        self.assertEqual(live.stub.TopProducts(req, timeout=10), fresh.stub.TopProducts(req, timeout=10))

        live.stop()
        fresh.stop()
        a, b = live.dump_state(TABLES), fresh.dump_state(TABLES)
        counts = table_counts(a)
        self.assertGreaterEqual(len(counts), 9, counts)  # not trivially equal: tables have rows
        if a != b:
            la, lb = a.decode().splitlines(), b.decode().splitlines()
            diff = [(x, y) for x, y in zip(la, lb) if x != y][:3]
            self.fail(f"state differs: {len(la)} vs {len(lb)} lines; first differences: {diff}")

    def test_checkpoint_start_keeps_deleted_users_deleted(self):
        events = L.generate(seed=7, n_users=20, n_products=20, n_categories=3, n_events=1500)
        node = L.start_node(self, args=["--idle-timeout", "0", "--checkpoint-interval", "100ms",
                                        "--checkpoint-min-pause", "100ms"])
        self.assertEqual(node.ingest(events).accepted, len(events))
        victim = events[0]["userId"]
        p = L.user_partition(victim)
        m = L.pb()
        rpc = reprocess_rpc(node)
        # wait for a checkpoint of the victim's partition that holds every event of it
        want = sum(1 for e in events if L.user_partition(e["userId"]) == p)

        def checkpointed():
            try:
                r = rpc(m.ReprocessRequest(partition=p, from_checkpoint="latest"), timeout=30)
            except grpc.RpcError:
                return None
            return r if r.partitions[0].checkpoint and r.partitions[0].records == 0 and \
                r.partitions[0].next_seq == want else None

        res = L.poll_until(checkpointed, 20, interval=0.2, what=f"a checkpoint of partition {p}")
        part = res.partitions[0]
        self.assertEqual((part.partition, part.first_seq, part.next_seq), (p, want, want))
        self.assertTrue(part.checkpoint.startswith(f"p{p:05d}-"), part.checkpoint)
        before = node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=victim), timeout=10)
        self.assertGreater(before.profile.event_count, 0)

        node.stub.DeleteUser(m.DeleteUserRequest(user_id=victim), timeout=30)
        # the checkpoint that held the user is gone (DeleteUser wrote a fresh one and
        # deleted the older ones: docs/security.md "Deleting a user"): a rebuild from it
        # by its name is refused, one from "latest" starts after the deletion
        with self.assertRaises(grpc.RpcError) as cm:
            rpc(m.ReprocessRequest(partition=p, from_checkpoint=part.checkpoint), timeout=30)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("unknown checkpoint", cm.exception.details())
        res = rpc(m.ReprocessRequest(partition=p, from_checkpoint="latest"), timeout=30)
        self.assertNotEqual(res.partitions[0].checkpoint, part.checkpoint)
        self.assertGreater(res.partitions[0].first_seq, part.next_seq)  # the delete's record
        with self.assertRaises(grpc.RpcError) as cm:
            node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=victim), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        c = node.stub.EventCounts(m.EventCountsRequest(user_id=victim, include_open=True), timeout=10)
        self.assertEqual(len(c.windows), 0)
        # back with a new event after the deletion: a rebuild from the newest checkpoint
        # keeps only what came after the deletion
        again = {"eventId": "after-delete", "userId": victim, "timestamp": events[-1]["timestamp"],
                 "eventType": "view", "productId": "p-new", "category": "books"}
        self.assertEqual(node.ingest([again]).accepted, 1)
        res = rpc(m.ReprocessRequest(partition=p, from_checkpoint="latest"), timeout=30)
        prof = node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=victim), timeout=10).profile
        self.assertEqual(prof.event_count, 1)
        self.assertEqual([v.product_id for v in prof.recent_views], ["p-new"])
        # the other users of the partition are intact
        others = sorted({e["userId"] for e in events if L.user_partition(e["userId"]) == p} - {victim})
        for u in others:
            self.assertGreater(node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=u),
                                                        timeout=10).profile.event_count, 0)

    def test_corrupted_checkpoint_falls_back_to_the_previous(self):
        """A flipped byte in the newest checkpoint of a partition is detected; a rebuild
        from "latest" uses the previous checkpoint plus the longer log after it, and the
        partition ends exactly as it was."""
        node = L.start_node(self, args=["--idle-timeout", "0", "--checkpoint-interval", "100ms",
                                        "--checkpoint-min-pause", "100ms", "--checkpoint-keep", "3"])
        m = L.pb()
        p = 5
        users = L.users_in_partition(p, 256, 6)
        t0 = L.now_ms() - 3_600_000
        first = [{"eventId": f"a-{i}", "userId": users[i % 6], "timestamp": t0 + i * 1000,
                  "eventType": "view", "productId": f"p-{i % 9}", "category": "books"}
                 for i in range(60)]
        second = [{"eventId": f"b-{i}", "userId": users[i % 6], "timestamp": t0 + 60_000 + i * 1000,
                   "eventType": "purchase" if i % 5 == 0 else "view", "productId": f"p-{i % 7}",
                   "category": "games"} for i in range(40)]
        ckdir = os.path.join(node.data_dir, "checkpoints")

        def checkpoint_at(seq):
            files = L.checkpoint_files(ckdir).get(p, [])
            return next((f for f in files if f.endswith(f"-{seq:020d}.ckp")), None)

        self.assertEqual(node.ingest(first).accepted, 60)
        older = L.poll_until(lambda: checkpoint_at(60), 20, what="a checkpoint at seq 60")
        self.assertEqual(node.ingest(second).accepted, 40)
        newest = L.poll_until(lambda: checkpoint_at(100), 20, what="a checkpoint at seq 100")

        def answers():
            out = []
            for u in users:
                out.append(node.stub.GetUserProfile(m.GetUserProfileRequest(user_id=u), timeout=10))
                out.append(node.stub.EventCounts(m.EventCountsRequest(user_id=u, include_open=True),
                                                 timeout=10))
            return out
        before = answers()

        with open(newest, "r+b") as f:  # one flipped byte in the middle of the records
            f.seek(os.path.getsize(newest) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x01]))
        rc, _, err = L.verify_checkpoint(newest)
        self.assertEqual(rc, 1, err)
        self.assertIn("corrupt", err.lower())

        res = reprocess_rpc(node)(m.ReprocessRequest(partition=p, from_checkpoint="latest"),
                                  timeout=60)
        part = res.partitions[0]
        self.assertEqual(part.checkpoint, os.path.basename(older))  # the previous one
        self.assertEqual((part.first_seq, part.records, part.next_seq), (60, 40, 100))
        self.assertEqual(answers(), before)
        with open(node.log_path) as f:
            self.assertIn('msg="checkpoint corrupt"', f.read())

    def test_truncated_log_is_reported(self):
        t0 = L.now_ms() - 5 * 3_600_000
        user = "u-trunc"
        p = L.user_partition(user)
        evs = [{"eventId": f"t-{i}", "userId": user, "timestamp": t0 + i * 3_600_000,
                "eventType": "view", "productId": f"p-{i}", "category": "books"}
               for i in range(5)]
        node = L.start_node(self, args=["--idle-timeout", "0", "--checkpoint-interval", "0",
                                        "--log-retention", "90m", "--sweep-interval", "30m",
                                        "--dedup-window", "1h"])  # the log is kept for it too
        for e in evs:
            self.assertEqual(node.ingest([e]).accepted, 1)
        out = L.cli_json(self, node.endpoint, "reprocess", "--partition", str(p))
        part = out["partitions"][0]
        self.assertTrue(part["log_truncated"], out)
        self.assertGreater(part["first_seq"], 0)
        self.assertEqual(part["next_seq"], 5)
        self.assertEqual(part["records"], 5 - part["first_seq"])
        self.assertEqual(out["first_seq"], part["first_seq"])
        rc, text, _ = L.run_cli(node.endpoint, "reprocess", "--partition", str(p))
        self.assertEqual(rc, 0)
        self.assertIn("truncated by --log-retention", text)

    def test_bad_requests(self):
        node = L.start_node(self, args=NODE_ARGS)
        events = L.generate(seed=3, n_events=200)
        self.assertEqual(node.ingest(events).accepted, 200)
        m = L.pb()
        rpc = reprocess_rpc(node)
        P = m.ReprocessParameter
        cases = [
            (m.ReprocessRequest(), "give a partition or all"),
            (m.ReprocessRequest(partition=256), "partition 256 is out of range (0 .. 255)"),
            (m.ReprocessRequest(all=True, set=[P(name="decay", value="1d")]),
             'unknown parameter "decay"'),
            (m.ReprocessRequest(all=True, set=[P(name="half-life", value="soon")]),
             'half-life: bad duration "soon"'),
            (m.ReprocessRequest(all=True, set=[P(name="popularity-half-life", value="0")]),
             "bad duration"),
            (m.ReprocessRequest(partition=4, set=[P(name="half-life", value="1d")]),
             "it needs --all"),
            (m.ReprocessRequest(partition=4, from_checkpoint="123"), 'unknown checkpoint "123"'),
            (m.ReprocessRequest(partition=4, from_checkpoint="p00005-00000000000000000001.ckp"),
             "not a checkpoint of partition 4"),
            (m.ReprocessRequest(all=True, from_checkpoint="latest",
                                set=[P(name="half-life", value="1d")]),
             "cannot be combined with --set"),
        ]
        for req, want in cases:
            with self.assertRaises(grpc.RpcError, msg=str(req)) as cm:
                rpc(req, timeout=30)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, str(req))
            self.assertIn(want, cm.exception.details(), str(req))
        # the CLI: usage errors and the server's answer, exit codes of docs/cli.md
        self.assertEqual(L.run_cli(node.endpoint, "reprocess")[0], 2)
        self.assertEqual(L.run_cli(node.endpoint, "reprocess", "--all", "--set", "x")[0], 2)
        rc, _, err = L.run_cli(node.endpoint, "reprocess", "--all", "--set", "half-life=-3")
        self.assertEqual(rc, 1, err)
        self.assertIn("INVALID_ARGUMENT", err)
        # nothing changed, the node still answers
        prof = L.cli_json(self, node.endpoint, "profile", events[0]["userId"])
        self.assertGreater(prof["event_count"], 0)


class ReprocessClusterTest(unittest.TestCase):
    """A cluster rebuilds stage 1 of every partition on its owner (the ingest node fans
    Reprocess out to every state node) and, for --all --from-start, stage 2 on every state
    node at once, with stage 2 frozen meanwhile."""

    def two_state_nodes(self, P, args=()):
        """etcd, a coordinator, state nodes s1 and s2, ingest node i1: (cluster, i1)."""
        L.require_coordinator()
        L.require_etcd()
        L.require_cli()
        cl = L.Cluster(self, partitions=P, ttl_s=2, node_args=NODE_ARGS + list(args))
        cl.add_coordinator("c1")
        for s in ("s1", "s2"):
            cl.add_node(s, "state")
        cl.wait_assignment({"s1", "s2"})
        return cl, cl.add_node("i1", "ingest")

    def test_affinity_half_life_across_state_nodes(self):
        P = 16
        events = L.generate(seed=19, n_users=40, n_products=30, n_categories=4, n_events=3000)
        ref = L.start_node(self, args=NODE_ARGS + ["--partitions", str(P),
                                                   "--affinity-half-life", HALF_LIFE])
        cl, front = self.two_state_nodes(P)
        for b in L.batches(events, [500]):
            self.assertEqual(front.ingest(b).accepted, len(b))
            self.assertEqual(ref.ingest(b).accepted, len(b))
        m = L.pb()
        users = sorted({e["userId"] for e in events})
        profile = lambda n, u: n.stub.GetUserProfile(m.GetUserProfileRequest(user_id=u), timeout=10)
        self.assertNotEqual(profile(front, users[0]), profile(ref, users[0]))

        # a state node asked directly cannot rebuild stage 2 alone: only through an ingest
        # node, which rebuilds it on every state node at once
        sreq = L.state_stubs().StateReprocessRequest(request=L.pb().ReprocessRequest(
            all=True, set=[L.pb().ReprocessParameter(name="popularity-half-life", value="1h")]))
        direct = cl.nodes["s1"].channel.unary_unary(
            "/eddy.state.v1.State/Reprocess", request_serializer=type(sreq).SerializeToString,
            response_deserializer=L.pb().ReprocessResponse.FromString)
        with self.assertRaises(grpc.RpcError) as cm:
            direct(sreq, timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("ask an ingest node", cm.exception.details())

        queries = Queries(front, users)
        queries.start()
        L.poll_until(lambda: len(queries.answered) >= 3, 10, what="queries answering before")
        res = L.cli_json(self, front.endpoint, "reprocess", "--all", "--set",
                         f"affinity-half-life={HALF_LIFE}")
        n = len(queries.answered)
        L.poll_until(lambda: len(queries.answered) >= n + 3, 10, what="queries answering after")
        queries.stop.set()
        queries.join(20)
        self.assertEqual(queries.errors, [])
        self.assertEqual([p["partition"] for p in res["partitions"]], list(range(P)))
        # every event, and the stage-2 records the product partitions' leaders logged
        self.assertGreaterEqual(res["records_replayed"], len(events))
        self.assertTrue(res["stage2_rebuilt"])  # --all from the start: the whole cluster
        self.assertEqual(res["parameters"]["affinity-half-life"], HALF_LIFE_MS)
        # every user, whichever state node owns it, now has the model a fresh ingest with
        # the new half-life gives
        for u in users:
            self.assertEqual(profile(front, u), profile(ref, u), u)

        # one partition: only its owner rebuilds it
        p = L.user_partition(users[0], P)
        one = L.cli_json(self, front.endpoint, "reprocess", "--partition", str(p))
        self.assertEqual([x["partition"] for x in one["partitions"]], [p])
        self.assertGreater(one["partitions"][0]["records"], 0)
        self.assertEqual(profile(front, users[0]), profile(ref, users[0]))

    def test_stage2_half_lives_across_state_nodes(self):
        """Stage 2 (product popularity, category index, product windows, neighbours) of a
        cluster rebuilt with new half-lives under ingest: every state node's product state
        together equals a fresh --dev ingest of the same events with those half-lives."""
        # 10,000 events in the log before the rebuild, so a state node's rebuilt stage-2
        # records are over 2 x 2,048 whenever the rebuild starts (the 2,200 sent during
        # it may or may not be in): with 2 of the 4 partitions, one goes in more than one
        # round (2,048 batches a round)
        P = 4
        events = L.generate(seed=23, n_users=50, n_products=200, n_categories=4, n_events=12200)
        first, second = events[:10000], events[10000:]
        ref = L.start_node(self, args=NODE_ARGS + [
            "--partitions", str(P), "--affinity-half-life", HALF_LIFE,
            "--popularity-half-life", HALF_LIFE, "--neighbour-half-life", HALF_LIFE])
        cl, front = self.two_state_nodes(P)
        for b in L.batches(first, [500]):
            self.assertEqual(front.ingest(b).accepted, len(b))
        for b in L.batches(events, [500]):
            self.assertEqual(ref.ingest(b).accepted, len(b))
        users = sorted({e["userId"] for e in events})

        queries = Queries(front, users)
        queries.start()
        L.poll_until(lambda: len(queries.answered) >= 3, 10, what="queries answering before")
        proc = subprocess.Popen([L.require_cli(), "--endpoint", front.endpoint, "-o", "json",
                                 "reprocess", "--all", "--from-start", "--set",
                                 f"half-life={HALF_LIFE}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # ingest goes on during the rebuild: its stage-2 records wait in the OUTBOXes while
        # stage 2 is frozen and are applied, with the new half-lives, after the swap
        for b in L.batches(second, [250]):
            r = front.ingest(b)
            self.assertEqual((r.accepted, len(r.rejected)), (len(b), 0))
        out, err = proc.communicate(timeout=120)
        n = len(queries.answered)
        L.poll_until(lambda: len(queries.answered) >= n + 3, 10, what="queries answering after")
        queries.stop.set()
        queries.join(20)
        self.assertEqual(proc.returncode, 0, f"eddy reprocess: {err}")
        self.assertEqual(queries.errors, [])
        res = json.loads(out)
        self.assertTrue(res["stage2_rebuilt"])
        self.assertEqual([p["partition"] for p in res["partitions"]], list(range(P)))
        self.assertEqual(res["parameters"], {"affinity-half-life": HALF_LIFE_MS,
                                             "popularity-half-life": HALF_LIFE_MS,
                                             "neighbour-half-life": HALF_LIFE_MS})
        sent = []
        for s in ("s1", "s2"):
            log = cl.nodes[s].log_tail(10000)
            self.assertIn("stage-2 rebuild swapped", log)
            sent += [int(x) for x in re.findall(r"rebuilt stage-2 records sent.* batches=(\d+)", log)]
        self.assertEqual(len(sent), 2)
        # a node holds 2 of the 4 partitions: over 2 x 2,048 means one went in 2 rounds
        self.assertGreater(max(sent), 2 * 2048, sent)

        cl.wait_outbox_empty()
        m = L.pb()
        req = m.TopProductsRequest(limit=1000, include_open=True)
        self.assertEqual(front.stub.TopProducts(req, timeout=10), ref.stub.TopProducts(req, timeout=10))
        profile = lambda n, u: n.stub.GetUserProfile(m.GetUserProfileRequest(user_id=u), timeout=10)
        for u in users[:10]:
            self.assertEqual(profile(front, u), profile(ref, u), u)

        assert_product_tables_equal(self, [cl.nodes["s1"], cl.nodes["s2"]], ref,
                                    cl.assignment()["owners"])

    def test_stage2_rebuild_aborts_everywhere_on_a_failure(self):
        """One state node cannot join the stage-2 rebuild (another one holds its freeze):
        the rebuild is aborted on every node, nothing is swapped, and the stage-2 records
        that waited in the OUTBOXes while stage 2 was frozen all arrive once it thaws."""
        P = 16
        events = L.generate(seed=29, n_users=40, n_products=30, n_categories=4, n_events=3000)
        first, second = events[:2000], events[2000:]
        ref = L.start_node(self, args=NODE_ARGS + ["--partitions", str(P)])
        cl, front = self.two_state_nodes(P, ["--move-freeze", "60s"])
        for b in L.batches(events, [500]):
            self.assertEqual(ref.ingest(b).accepted, len(b))
        for b in L.batches(first, [500]):
            self.assertEqual(front.ingest(b).accepted, len(b))
        cl.wait_outbox_empty()

        st = L.state_stubs()
        s1 = cl.nodes["s1"]
        phase = s1.channel.unary_unary("/eddy.state.v1.State/Stage2Rebuild",
                                       request_serializer=st.Stage2RebuildRequest.SerializeToString,
                                       response_deserializer=st.Stage2RebuildResponse.FromString)
        phase(st.Stage2RebuildRequest(phase=st.Stage2RebuildRequest.PREPARE, rebuild_id=77),
              timeout=30)
        # ingest goes on; stage-2 records of s1's product partitions wait in the OUTBOXes
        for b in L.batches(second, [500]):
            self.assertEqual(front.ingest(b).accepted, len(b))
        self.assertGreater(sum(n.partial().outbox for n in cl.state_nodes()), 0)

        rc, _, err = L.run_cli(front.endpoint, "reprocess", "--all", "--set",
                               f"half-life={HALF_LIFE}")
        self.assertEqual(rc, 1, err)
        self.assertIn("ABORTED", err)
        self.assertIn("another stage-2 rebuild (77)", err)
        L.poll_until(lambda: "stage-2 rebuild aborted" in cl.nodes["s2"].log_tail(10000), 10,
                     what="s2 aborted its part")
        self.assertGreater(sum(n.partial().outbox for n in cl.state_nodes()), 0)

        phase(st.Stage2RebuildRequest(phase=st.Stage2RebuildRequest.ABORT, rebuild_id=77),
              timeout=30)
        cl.wait_outbox_empty()
        m = L.pb()
        users = sorted({e["userId"] for e in events})
        profile = lambda n, u: n.stub.GetUserProfile(m.GetUserProfileRequest(user_id=u), timeout=10)
        for u in users[:10]:  # nothing rebuilt: the old half-lives everywhere
            self.assertEqual(profile(front, u), profile(ref, u), u)
        assert_product_tables_equal(self, [cl.nodes["s1"], cl.nodes["s2"]], ref,
                                    cl.assignment()["owners"])


if __name__ == "__main__":
    unittest.main()
