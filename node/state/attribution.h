/* Attribution of clicks, carts and purchases to the Recommend answers of an experiment
 * (docs/design.md §4, Experiments). Part of the deterministic apply: an impression (a
 * LogRecord of the user's partition) joins the user's latest impressions (table IMPR),
 * and a later CLICK, ADD_TO_CART or PURCHASE of a product it listed counts for its
 * experiment and variant in the partition's counts (table EXP_STAT), at most once per
 * impression and kind, with every attributed purchase's price added to the revenue; and,
 * for recommendation accuracy, every listed product counts once as listed and once more
 * if it is later clicked or bought.
 * Which impression an event goes to is a function of the log only (attribution_find).
 *
 * Threads: the partition's writer thread (the txn functions); the rest is pure. */
#ifndef EDDY_ATTRIBUTION_H
#define EDDY_ATTRIBUTION_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/store_txn.h"

#define ATTRIBUTION_KEEP 16       /* impressions kept per user, the latest */
#define ATTRIBUTION_SKEW_MS 5000  /* an event may carry a time this much before the
                                     impression it follows (the client's clock against the
                                     serving node's) */

/* Bits of UserImpressions.Entry.done, and the kinds of events attributed. */
enum { ATTR_CLICK = 1, ATTR_CART = 2, ATTR_PURCHASE = 4 };

/* The attribution kind of an event type (0: not attributed). */
unsigned attribution_kind(Eddy__V1__EventType type);

/* The entry of 'ui' that 'ev' is attributed to, or -1. With a recommendation_id: the
 * impression of that id, if it listed the product (no window: the client says where the
 * event came from). Without: the latest impression that listed the product, served at most
 * the kind's window before the event (CLICK: click window; ADD_TO_CART and PURCHASE:
 * purchase window) and not more than ATTRIBUTION_SKEW_MS after it. Pure. */
int attribution_find(const Eddy__Store__V1__UserImpressions *ui, const Eddy__V1__Event *ev);

/* Whether 'ev' (attributed to entry 'e') is a hit for recommendation accuracy: a CLICK or
 * PURCHASE of a product the impression listed, the first of that product (clicked or
 * bought: once per listed product). Pure. */
bool attribution_hit(const Eddy__Store__V1__UserImpressions__Entry *e, const Eddy__V1__Event *ev);

/* Append a copy of 'imp' (without its user id) to 'ui', dropping the oldest beyond
 * ATTRIBUTION_KEEP. 'ui' must be heap-allocated protobuf-c (freed with free_unpacked). */
eddy_err attribution_add(Eddy__Store__V1__UserImpressions *ui,
                         const Eddy__Store__V1__Impression *imp);

/* Apply an impression record of partition 'p': the user's IMPR row and the variant's
 * impressions count. */
eddy_err attribution_impression(store_txn *t, uint32_t p, const Eddy__Store__V1__Impression *imp);

/* Apply what event 'ev' of partition 'p' adds to the experiments' counts (nothing for the
 * kinds that are not attributed or users without impressions). */
eddy_err attribution_event(store_txn *t, uint32_t p, const Eddy__V1__Event *ev);

/* The key of the user's IMPR row (the prefix of every row of the user). */
void attribution_user_key(struct store_key *k, uint32_t p, const char *user_id);

#endif
