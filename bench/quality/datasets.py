"""The evaluation datasets as one event stream each: MovieLens (a directory in the
MovieLens CSV layout, never copied into the repo) and a synthetic e-commerce stream with
planted structure, generated from a seed.

An event is a tuple (ts_ms, user, item, type, category, brand, price, query), sorted by
(ts_ms, user, item); 'type' is one of TYPES. A positive is a purchase.
"""
import csv
import os
import random

TYPES = ("view", "click", "add_to_cart", "remove_from_cart", "purchase", "search")


def movielens(data_dir, max_user=0):
    """Ratings as events: rating >= 4 -> purchase, else view; category = first genre.
    max_user > 0 keeps users 1..max_user only (a quick sample)."""
    genres = {}
    with open(os.path.join(data_dir, "movies.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            g = row["genres"]
            genres[row["movieId"]] = "" if g == "(no genres listed)" else g.split("|")[0]
    events = []
    with open(os.path.join(data_dir, "ratings.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            u = int(row["userId"])
            if max_user and u > max_user:
                continue
            m = row["movieId"]
            kind = "purchase" if float(row["rating"]) >= 4.0 else "view"
            events.append((int(row["timestamp"]) * 1000, f"u{u}", f"m{m}", kind,
                           genres.get(m, ""), "", 0.0, ""))
    events.sort()
    return events


def synthetic(users=400, categories=12, per_category=40, days=60, seed=7):
    """A shop: products in categories, each with a brand and a price band (0 cheap .. 2
    premium); every user prefers two or three categories and one price band. A session has
    a category intent: a search for it, views of products of that category (mostly in the
    user's band, popular ones more often), a click or two, sometimes a cart and a purchase;
    one product in four has a bundle partner that is bought right after it most of the time.
    Sessions of all users interleave over 'days' of event time."""
    rng = random.Random(seed)
    products = []  # (id, category, brand, band, price)
    for c in range(categories):
        for j in range(per_category):
            band = j % 3
            products.append((f"c{c}-p{j}", f"cat{c}", f"b{c}-{j % 5}", band,
                             round((10, 40, 160)[band] * (1 + rng.random()), 2)))
    by_cat = {}
    for p in products:
        by_cat.setdefault(p[1], []).append(p)
    # popularity inside a category: Zipf-like, a random order per category
    weight = {}
    for cat, ps in by_cat.items():
        order = list(range(len(ps)))
        rng.shuffle(order)
        for rank, i in enumerate(order):
            weight[ps[i][0]] = 1.0 / (1 + rank) ** 0.8
    bundle = {}
    for cat, ps in by_cat.items():
        ids = [p for p in ps]
        rng.shuffle(ids)
        for i in range(0, len(ids) // 4 * 2, 2):  # a quarter of the products, paired
            bundle[ids[i][0]] = ids[i + 1]
            bundle[ids[i + 1][0]] = ids[i]
    cats = sorted(by_cat)
    events = []
    span = days * 86400 * 1000
    t0 = 1_700_000_000_000
    for u in range(users):
        uid = f"s{u}"
        prefs = rng.sample(cats, rng.choice((2, 3)))
        band = rng.randrange(3)
        for s in range(rng.randint(3, 12)):
            ts = t0 + rng.randrange(span)
            cat = rng.choice(prefs) if rng.random() < 0.85 else rng.choice(cats)
            pool = [p for p in by_cat[cat] if p[3] == band or rng.random() < 0.15]
            w = [weight[p[0]] for p in pool]
            events.append((ts, uid, "", "search", "", "", 0.0, cat))
            cart = []
            for _ in range(rng.randint(2, 7)):
                ts += rng.randint(20, 240) * 1000
                p = rng.choices(pool, w)[0]
                events.append((ts, uid, p[0], "view", p[1], p[2], p[4], ""))
                if rng.random() < 0.3:
                    ts += rng.randint(5, 60) * 1000
                    events.append((ts, uid, p[0], "click", p[1], p[2], p[4], ""))
                if rng.random() < 0.25:
                    ts += rng.randint(5, 60) * 1000
                    events.append((ts, uid, p[0], "add_to_cart", p[1], p[2], p[4], ""))
                    cart.append(p)
            if cart and rng.random() < 0.2:
                ts += rng.randint(5, 60) * 1000
                p = cart.pop(rng.randrange(len(cart)))
                events.append((ts, uid, p[0], "remove_from_cart", p[1], p[2], p[4], ""))
            bought = []
            for p in cart:
                if rng.random() < 0.7:
                    bought.append(p)
            if not bought and rng.random() < 0.4:
                bought.append(rng.choices(pool, w)[0])
            for p in bought:
                ts += rng.randint(30, 300) * 1000
                events.append((ts, uid, p[0], "purchase", p[1], p[2], p[4], ""))
                q = bundle.get(p[0])
                if q and rng.random() < 0.7:
                    ts += rng.randint(30, 300) * 1000
                    events.append((ts, uid, q[0], "view", q[1], q[2], q[4], ""))
                    ts += rng.randint(10, 120) * 1000
                    events.append((ts, uid, q[0], "purchase", q[1], q[2], q[4], ""))
    events.sort()
    return events
