#!/usr/bin/python3
"""Write a realistic stream of shop events as JSON lines (the seed's UserEvent shape) for
the quick start: users browsing products in 5 categories over the last 30 minutes, with
searches, carts and purchases. Deterministic for a given --seed.

The catalogue and the audience grow with --events (by default about 40 events per user and
100 per product, at least 50 users and 40 products): a user who has seen or bought most of
the catalogue has nothing left to be recommended (`eddy recommend u-7` would answer
nothing after 200,000 events over 50 users and 40 products)."""
import argparse
import json
import random
import sys
import time

CATEGORIES = {
    "electronics": ["acme", "voltix"], "books": ["penguin", "orbit"],
    "kitchen": ["chefco", "acme"], "sports": ["stride", "peak"], "toys": ["funco", "orbit"],
}
EVENTS_PER_USER = 40
EVENTS_PER_PRODUCT = 100


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--users", type=int, default=0, help="default: max(50, events / 40)")
    ap.add_argument("--products", type=int, default=0, help="default: max(40, events / 100)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    args.users = args.users or max(50, args.events // EVENTS_PER_USER)
    n_products = args.products or max(40, args.events // EVENTS_PER_PRODUCT)
    rnd = random.Random(args.seed)
    cats = sorted(CATEGORIES)
    by_cat = {c: [] for c in cats}
    products = []
    for i in range(n_products):
        c = cats[i % len(cats)]
        products.append((f"p-{i}", c, CATEGORIES[c][i % 2], round(5 + (i * 7.3) % 200, 2)))
        by_cat[c].append(products[-1])
    now = int(time.time() * 1000)
    start = now - 30 * 60 * 1000
    for n in range(args.events):
        user = f"u-{rnd.randrange(args.users)}"
        # each user prefers one category: skewed, so recommendations have something to say
        fav = cats[int(user[2:]) % len(cats)]
        pool = by_cat[fav] if rnd.random() < 0.7 else products
        pid, cat, brand, price = rnd.choice(pool)
        r = rnd.random()
        kind = ("view" if r < 0.6 else "click" if r < 0.75 else "add_to_cart" if r < 0.85
                else "purchase" if r < 0.92 else "search")
        ev = {"eventId": f"qs-{args.seed}-{n}", "userId": user, "sessionId": f"s-{user}",
              "timestamp": start + n * (30 * 60 * 1000 // args.events), "eventType": kind,
              "productId": pid, "category": cat, "brand": brand, "price": price}
        if kind == "search":
            ev["searchQuery"] = f"{brand} {cat}"
        json.dump(ev, sys.stdout)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
