/* The experiments of a cluster kept in etcd: one key per experiment,
 * /eddy/<cluster>/experiments/<name>, its value the encoded eddy.v1.Experiment. Every node
 * watches the prefix and hands what etcd holds to its registry (expreg_replace); the admin
 * calls of any node write through the registry's saver, one key with a compare-and-swap on
 * its mod_revision, so two concurrent changes of one experiment never lose one and
 * changes of different experiments never conflict.
 *
 * Threads: the saver runs on admin call threads, the watch on its own thread; one mutex
 * guards the keys known (taken after the registry's, never held while calling into it). */
#ifndef EDDY_EXPSYNC_H
#define EDDY_EXPSYNC_H

#include <stddef.h>

#include "common/err.h"
#include "common/etcd.h"
#include "node/state/expreg.h"

#define EXPSYNC_PREFIX_MAX 320 /* "/eddy/<cluster>/experiments/" */

typedef struct expsync expsync;

/* A link between 'reg' and the experiments of 'cluster' (both borrowed; they outlive the
 * link). From now on changes made through 'reg' fail UNAVAILABLE until expsync_start.
 * Caller owns *out; free with expsync_free. */
eddy_err expsync_new(expreg *reg, const char *cluster, expsync **out);

/* Read the experiments from 'etcd' (borrowed until expsync_free) into the registry, then
 * follow their changes. On an error 'why' says it and nothing was started. */
eddy_err expsync_start(expsync *s, etcd_client *etcd, char *why, size_t whylen);

/* Stop following and detach from the registry (changes made through it afterwards stay in
 * memory). Accepts NULL. */
void expsync_free(expsync *s);

/* The key of experiment 'name' in 'cluster' (false if it does not fit 'len'). Pure. */
bool expsync_key(const char *cluster, const char *name, char *out, size_t len);

/* The experiment a key's value holds, checked against the key's name (NULL: not one;
 * caller owns the result: free with eddy__v1__experiment__free_unpacked). Pure. */
Eddy__V1__Experiment *expsync_decode(const char *name, const void *value, size_t len);

#endif
