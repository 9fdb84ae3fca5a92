/* Recommendation ranking (docs/design.md §3.6). rec_rank is a pure function of plain structs,
 * so it is unit-testable without storage: it blends
 *   (a) products popular now in the user's top categories, weighted by affinity,
 *   (b) co-occurrence neighbours of the user's recent items, weighted by recency,
 *   (c) context: neighbours of the current product and of the cart,
 *   (d) global popularity ("trending now"), weighted like the others,
 * excludes purchased / cart / current items, caps items per category, fills up with
 * global popularity ("trending now"; all of the answer for a cold user), and gives each
 * item the reason of its largest contribution. */
#ifndef EDDY_RECOMMEND_H
#define EDDY_RECOMMEND_H

#include <stdbool.h>
#include <stddef.h>

#define REC_ID_CAP 256 /* hard ceiling of id and category lengths (flags may lower it) */

struct scored_product {
    char product_id[REC_ID_CAP + 1];
    char category[REC_ID_CAP + 1];
    double score;
};

struct rec_category {          /* (a) */
    const char *category;
    double affinity;
    const struct scored_product *items; /* popular in the category, best first */
    size_t n;
};

struct rec_anchor {            /* (b) and (c): an item whose neighbours are candidates */
    const char *product_id;
    double weight;             /* recency weight for (b); 1 current product, 0.8 cart (c) */
    bool context;              /* (c) rather than (b) */
    bool cart;                 /* (c) from the cart (reason "goes with your cart") */
    const struct scored_product *items; /* neighbours, best first */
    size_t n;
};

struct rec_params {
    double w_popular;          /* (a) blend weight */
    double w_neighbours;       /* (b) */
    double w_context;          /* (c) */
    int diversity_cap;         /* items per category in one answer (0 = no cap) */
    bool exclude_interacted;   /* leave out viewed / clicked / carted products by default */
    double w_trending;         /* global popularity as a source (0: only the fill below) */
};

struct rec_input {
    const struct rec_category *cats;
    size_t ncats;
    const struct rec_anchor *anchors;
    size_t nanchors;
    const struct scored_product *global; /* global popularity, best first */
    size_t nglobal;
    const char *const *exclude;          /* never recommend these */
    size_t nexclude;
};

struct rec_item {
    char product_id[REC_ID_CAP + 1];
    char category[REC_ID_CAP + 1];
    double score;
    char reason[REC_ID_CAP + 64];
};

/* rec_rank's working memory (the candidates and the exclusions), kept by the caller and
 * reused: it grows to the largest input ranked with it, so a warm ranking allocates
 * nothing. Zero-initialise it; rec_mem_release frees it. */
struct rec_mem {
    void *block;
    size_t size;
};

void rec_mem_release(struct rec_mem *m);

/* Rank into 'out' (room for 'max' items) with the working memory 'm'; returns the number
 * of items written (0 also when out of memory). Sorted by score, ties by product id. */
size_t rec_rank(const struct rec_input *in, const struct rec_params *p, struct rec_mem *m,
                struct rec_item *out, size_t max);

#endif
