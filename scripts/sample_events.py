#!/usr/bin/python3
"""Write a small, realistic stream of shop events as JSON lines (the seed's UserEvent
shape) for the quick start: 50 users browsing 40 products in 5 categories over the last
30 minutes, with searches, carts and purchases. Deterministic for a given --seed."""
import argparse
import json
import random
import sys
import time

CATEGORIES = {
    "electronics": ["acme", "voltix"], "books": ["penguin", "orbit"],
    "kitchen": ["chefco", "acme"], "sports": ["stride", "peak"], "toys": ["funco", "orbit"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    cats = sorted(CATEGORIES)
    products = []
    for i in range(40):
        c = cats[i % len(cats)]
        products.append((f"p-{i}", c, CATEGORIES[c][i % 2], round(5 + (i * 7.3) % 200, 2)))
    now = int(time.time() * 1000)
    start = now - 30 * 60 * 1000
    for n in range(args.events):
        user = f"u-{rnd.randrange(args.users)}"
        # each user prefers one category: skewed, so recommendations have something to say
        fav = cats[int(user[2:]) % len(cats)]
        pool = [p for p in products if p[1] == fav] if rnd.random() < 0.7 else products
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
