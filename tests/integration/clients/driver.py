"""Drives the installed Python package (import eddy) through one scenario and prints what
happened as one JSON object; test_client_packages.py runs it in a clean venv and checks the
same answers as for the Node.js package (driver.js).
    python driver.py '{"scenario": "batch", "endpoint": "...", "user": "..."}'"""
import json
import sys

import eddy
from eddy import Client, EddyError, event


def summary(r):
    if r is None:
        return None
    return {"accepted": r.accepted, "duplicates": r.duplicates, "late": r.late,
            "batches": r.batches, "rejected": [[x.index, x.event_id, x.field] for x in r.rejected]}


def error(e):
    return {"code": e.code.name, "attempts": e.attempts}


def client(a, **kw):
    return Client(a.get("endpoint"), token=a.get("token"), tls_ca=a.get("tls_ca"),
                  tls_cert=a.get("tls_cert"), tls_key=a.get("tls_key"), **kw)


def batch(a):
    u = a["user"]
    evs = [event(u, "view", f"p-{i}", event_id=f"{u}-b{i}", category="books") for i in range(7)]
    evs[5] = event(u, "view", event_id=f"{u}-b5", category="books")  # invalid: no product_id
    out = {}
    with client(a, batch_size=3) as c:
        out["ingest"] = summary(c.ingest(evs))
        out["adds"] = [summary(c.add(event(u, "purchase", "p-1", event_id=f"{u}-a{i}")))
                       for i in range(4)]
        out["flush"] = summary(c.flush())
        c.add(event(u, "add_to_cart", "p-9", event_id=f"{u}-closed"))  # sent by close()
    return out


def reads(a):
    u = a["user"]
    out = {}
    with client(a) as c:
        r = c.recommend(u, limit=3)
        out["recommend"] = {"ids": [i.product_id for i in r.items], "cold_start": r.cold_start}
        p = c.get_user_profile(u).profile
        out["profile"] = {"events": p.event_count, "views": [v.product_id for v in p.recent_views],
                          "cart": [v.product_id for v in p.cart]}
        t = c.top_products(category="reads", include_open=True, limit=3, event_type="purchase")
        out["top"] = [[s.product_id, s.counts.purchase] for s in t.products]
        n = c.event_counts(user_id=u, include_open=True)
        out["counts"] = sum(w.counts.total for w in n.windows)
        for what, fn in (("missing", lambda: c.get_user_profile("u-nobody")),
                         ("deadline", lambda: c.recommend(u, timeout=1e-6))):
            try:
                fn()
                out[what] = None
            except EddyError as e:
                out[what] = error(e)
    return out


def retry(a):
    seen = []
    c = client(a, retries=a.get("retries", 2), backoff=(0.02, 0.1),
               on_retry=lambda r: seen.append({"code": r.code.name, "delay_ms": r.delay_s * 1000,
                                                "attempt": r.attempt,
                                                "retry_after_ms": r.retry_after_ms}))
    out = {"retries": seen}
    try:
        for _ in range(a.get("calls", 1)):
            c.recommend(a.get("user", "u-1"))
        out["error"] = None
    except EddyError as e:
        out["error"] = error(e)
    c.close()
    return out


def secure(a):
    u = a["user"]
    with client(a) as c:
        r = c.ingest([event(u, "view", "p-tls", event_id=f"{u}-tls")])
        return {"ingest": summary(r), "events": c.get_user_profile(u).profile.event_count}


def main():
    a = json.loads(sys.argv[1])
    out = {"batch": batch, "reads": reads, "retry": retry, "secure": secure}[a["scenario"]](a)
    out["module"] = eddy.__file__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
