/* The user model (the seed's PersonalizationModel): decayed category and brand
 * affinities, price range, recent views / searches / purchases and the cart, updated one
 * event at a time. model_apply is deterministic and, within the limits below, independent
 * of the order in which a user's events arrive:
 *   - affinities and the decayed price mean use exact bucketed decay (decay.h);
 *   - recent lists keep the newest --recent-items distinct ids by (time, id); an id seen
 *     twice at the same time keeps the greater category;
 *   - the cart keeps, per product, the newest add / remove / purchase by time (at the same
 *     time a removal or purchase wins over an add, then the greater category).
 * No event id is kept (state format 5: they were most of a model's bytes).
 * Only when a user has more distinct categories or brands than --max-affinities, or more
 * cart products than --max-cart, does eviction (of the weakest / oldest) depend on order. */
#ifndef EDDY_MODEL_H
#define EDDY_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"
#include "eddy/v1/store.pb-c.h"
#include "node/state/decay.h"

struct model_params {
    struct decay_params affinity; /* half-life of affinities and the price mean */
    int recent_items;             /* per recent list (20) */
    int max_affinities;           /* per category / brand list (50) */
    int max_cart;                 /* cart entries kept (50) */
};

/* The interest weight of an event type (view 1, click 2, add to cart 3, purchase 5,
 * search 0.5, remove from cart 0). */
double model_event_weight(Eddy__V1__EventType type);

/* Apply 'ev' to 'm' (an initialised or unpacked UserModel). */
eddy_err model_apply(Eddy__Store__V1__UserModel *m, const struct model_params *p,
                     const Eddy__V1__Event *ev);

/* Convert a model of state format 4 or older to format 5's: the recent items and cart
 * entries drop their event ids and the recent lists take the (time, id) order. Returns
 * whether anything changed (false: already converted). */
bool model_convert(Eddy__Store__V1__UserModel *m);

/* Whether 'product_id' is in the user's cart. */
bool model_in_cart(const Eddy__Store__V1__UserModel *m, const char *product_id);

/* Build the public profile. Caller owns *out: free with model_profile_free. */
eddy_err model_to_profile(const Eddy__Store__V1__UserModel *m, const struct model_params *p,
                          const char *user_id, Eddy__V1__UserProfile **out);
void model_profile_free(Eddy__V1__UserProfile *pr);

/* Encode 'm' exactly as protobuf_c_message_pack does, faster (pbenc.h; the apply has the
 * txn use it at commit), into 'o' (struct pbenc_out: the caller's scratch, or malloc'd).
 * False if 'm' carries unknown fields (use protobuf-c) or on allocation failure. */
struct pbenc_out;
bool model_pack(const Eddy__Store__V1__UserModel *m, struct pbenc_out *o);

/* A packed UserModel's last_ts, read from the wire format alone (the --state-ttl sweep
 * reads it for every user). False if the bytes are malformed. */
bool model_last_ts(const uint8_t *buf, size_t len, int64_t *ts);

/* Decode, from a stored UserModel's bytes, only what Recommend reads: the categories (names
 * and scores), the ids and times of the recent views and purchases, the cart's product ids
 * and flags, and last_ts; every other field stays at its default. Allocates with 'a'
 * (NULL: malloc; meant for an arena that frees everything at once: nothing is freed on
 * an error). The same values as protobuf-c's full decode of those fields for every value
 * a writer stores (fuzz_store_values checks it); on a field sent with another wire type
 * than its own, protobuf-c may read it (a bool as fixed64: true) where this, as protobuf's
 * own parsers, skips it. */
eddy_err model_unpack_for_recommend(const uint8_t *buf, size_t len, ProtobufCAllocator *a,
                                    Eddy__Store__V1__UserModel **out);

/* Affinities sorted best first, valued at the model's last event time. 'out' receives at
 * most 'max' entries (borrowed names); returns the count. */
struct affinity {
    const char *name;
    double score;
};
size_t model_top_categories(const Eddy__Store__V1__UserModel *m, const struct model_params *p,
                            struct affinity *out, size_t max);

#endif
