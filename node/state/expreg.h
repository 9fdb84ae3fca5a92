/* The experiments a node knows (A/B tests on Recommend, proto eddy.v1.Experiment): the
 * list in memory, read by every Recommend, and where it is kept. In --dev the node's own
 * store holds it (table EXP_DEF, outside every partition); in a cluster etcd does
 * (expreg_replace with what a node reads there), so every node agrees.
 *
 * Threads: any; one mutex guards the list (held for a copy, never for I/O but the dev
 * store's one synced write of a change, made by the admin calls). */
#ifndef EDDY_EXPREG_H
#define EDDY_EXPREG_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "eddy/v1/eddy.pb-c.h"
#include "node/state/experiment.h"
#include "node/state/recommend.h"
#include "node/state/store.h"

#define EXPREG_MAX 100 /* experiments a node keeps (running or stopped) */

typedef struct expreg expreg;

/* Saves one change: 'next' replaces 'prev', the registry's current version of it (NULL:
 * 'next' is new). Both borrowed for the call. A saver that finds the stored version is no
 * longer 'prev' (changed elsewhere meanwhile) answers EDDY_ERR_CONFLICT; on any error
 * 'why' (may be left empty) says what happened. */
typedef eddy_err expreg_save_fn(void *ud, const Eddy__V1__Experiment *prev,
                                const Eddy__V1__Experiment *next, char *why, size_t whylen);

/* A registry kept in 'st' (--dev: loaded from it now, saved to it on every change; NULL:
 * none, the caller sets a saver and fills it with expreg_replace). Caller owns *out; free
 * with expreg_free. */
eddy_err expreg_new(store *st, expreg **out);
void expreg_free(expreg *r);

/* Where changes go instead of the store (a cluster: etcd). 'fn' runs on the admin call's
 * thread with the mutex held, so changes made through one registry are saved one at a time
 * (it must not call back into the registry). */
void expreg_set_saver(expreg *r, expreg_save_fn *fn, void *ud);

/* Replace the list with 'n' encoded Experiment messages (a cluster node's view of etcd);
 * undecodable ones are skipped. */
eddy_err expreg_replace(expreg *r, const ProtobufCBinaryData *defs, size_t n);

/* The admin calls. On EDDY_ERR_INVALID, EDDY_ERR_NOT_FOUND or EDDY_ERR_CONFLICT (the name
 * is taken; with a saver also: changed elsewhere meanwhile) 'why' says what is wrong; a
 * saver's other errors (EDDY_ERR_UNAVAILABLE: etcd unreachable) come with its 'why'. On success *out (may be NULL) is a copy of what is stored; caller owns it
 * (free with eddy__v1__experiment__free_unpacked). 'now': the node's clock (ms). */
eddy_err expreg_create(expreg *r, const Eddy__V1__Experiment *e, int64_t now,
                       Eddy__V1__Experiment **out, char *why, size_t whylen);
eddy_err expreg_update(expreg *r, const Eddy__V1__Experiment *e, int64_t now,
                       Eddy__V1__Experiment **out, char *why, size_t whylen);
eddy_err expreg_stop(expreg *r, const char *name, int64_t now, Eddy__V1__Experiment **out,
                     char *why, size_t whylen);

/* A copy of the experiment 'name' (NULL if none); caller owns it as above. */
eddy_err expreg_get(expreg *r, const char *name, Eddy__V1__Experiment **out);

/* Copies of every experiment, by name, into a response the caller owns (free with
 * eddy__v1__list_experiments_response__free_unpacked). */
eddy_err expreg_list(expreg *r, Eddy__V1__ListExperimentsResponse **out);

/* What a user's Recommend follows: the first running experiment by name and the user's
 * variant in it (experiment_assign). */
struct expreg_choice {
    char experiment[EXPERIMENT_NAME_MAX + 1];
    char variant[EXPERIMENT_NAME_MAX + 1];
    struct rec_params rec;         /* 'base' with the variant's parameters */
    Eddy__V1__Exclusion exclude;   /* EXCLUSION_DEFAULT: the request's */
    uint32_t max_recommendations;  /* 0: the request's or the node's */
    int64_t click_window_ms;       /* 0: the node's flag */
    int64_t purchase_window_ms;
};

/* A number no earlier call on this registry returned (recommendation ids). */
uint64_t expreg_serial(expreg *r);

/* Whether 'user_id' is in a running experiment; if so *out says how. Accepts r == NULL
 * (false). */
bool expreg_choose(expreg *r, const char *user_id, const struct rec_params *base,
                   struct expreg_choice *out);

#endif
