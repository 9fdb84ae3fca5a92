/* LevelDB access for the state node: key encoding, typed reads, scans, and write
 * transactions with an overlay so the writer reads its own uncommitted writes. This is the
 * one place that turns LevelDB's char **errptr into eddy_err. */
#include "node/state/store.h"

#include <errno.h>
#include <leveldb/c.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/log.h"

struct store {
    leveldb_t *db;
    leveldb_options_t *opts;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *filter;
    leveldb_readoptions_t *ropts;
    leveldb_writeoptions_t *wsync;
    leveldb_writeoptions_t *wnosync;
};

/* ---- keys ---------------------------------------------------------------------------- */

static void key_put(struct store_key *k, const void *p, size_t n)
{
    /* Keys are built from validated, length-limited ids; overflow is a programmer error,
     * but truncating is safer than writing past the buffer. */
    if (k->len + n > STORE_KEY_MAX)
        n = STORE_KEY_MAX - k->len;
    memcpy(k->buf + k->len, p, n);
    k->len += n;
}

void key_init(struct store_key *k, uint32_t partition, enum store_table t)
{
    k->len = 0;
    key_u16(k, (uint16_t)partition);
    unsigned char tb = (unsigned char)t;
    key_put(k, &tb, 1);
}

void key_u16(struct store_key *k, uint16_t v)
{
    unsigned char b[2] = {(unsigned char)(v >> 8), (unsigned char)v};
    key_put(k, b, 2);
}

void key_u64(struct store_key *k, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (56 - 8 * i));
    key_put(k, b, 8);
}

void key_i64(struct store_key *k, int64_t v)
{
    key_u64(k, (uint64_t)v ^ (UINT64_C(1) << 63));
}

void key_bytes(struct store_key *k, const char *s, size_t n)
{
    key_put(k, s, n);
}

void key_str(struct store_key *k, const char *s)
{
    key_put(k, s, strlen(s));
}

void key_lstr(struct store_key *k, const char *s)
{
    size_t n = strlen(s);
    key_u16(k, (uint16_t)n);
    key_put(k, s, n);
}

bool key_get_u64(const unsigned char *key, size_t len, size_t *off, uint64_t *v)
{
    if (*off + 8 > len)
        return false;
    uint64_t r = 0;
    for (int i = 0; i < 8; i++)
        r = (r << 8) | key[*off + (size_t)i];
    *off += 8;
    *v = r;
    return true;
}

bool key_get_i64(const unsigned char *key, size_t len, size_t *off, int64_t *v)
{
    uint64_t u;
    if (!key_get_u64(key, len, off, &u))
        return false;
    *v = (int64_t)(u ^ (UINT64_C(1) << 63));
    return true;
}

void key_prefix_end(const struct store_key *prefix, struct store_key *end)
{
    *end = *prefix;
    while (end->len > 0) {
        if (end->buf[end->len - 1] != 0xff) {
            end->buf[end->len - 1]++;
            return;
        }
        end->len--;
    }
    /* all 0xff: no upper bound; an empty end means "to the end" in store_scan */
}

/* ---- open / read --------------------------------------------------------------------- */

static eddy_err take_err(char *lerr, char *err, size_t errlen)
{
    if (!lerr)
        return EDDY_OK;
    if (err)
        snprintf(err, errlen, "%s", lerr);
    log_error("msg=\"leveldb error\" error=\"%s\"", lerr);
    leveldb_free(lerr);
    return EDDY_ERR_IO;
}

/* mkdir -p: LevelDB creates the database directory but not its parents. */
static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

eddy_err store_open(const struct store_opts *o, store **out, char *err, size_t errlen)
{
    char *lerr = NULL;
    if (make_dirs(o->path) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", o->path, strerror(errno));
        return EDDY_ERR_IO;
    }
    store *s = calloc(1, sizeof(*s));
    if (!s)
        return EDDY_ERR_NOMEM;
    s->opts = leveldb_options_create();
    s->cache = leveldb_cache_create_lru(o->cache_bytes > 0 ? (size_t)o->cache_bytes : 64u << 20);
    s->filter = leveldb_filterpolicy_create_bloom(10);
    leveldb_options_set_create_if_missing(s->opts, 1);
    leveldb_options_set_cache(s->opts, s->cache);
    leveldb_options_set_filter_policy(s->opts, s->filter);
    leveldb_options_set_compression(s->opts, leveldb_snappy_compression);
    leveldb_options_set_write_buffer_size(
        s->opts, o->write_buffer_bytes > 0 ? (size_t)o->write_buffer_bytes : 16u << 20);
    s->db = leveldb_open(s->opts, o->path, &lerr);
    if (lerr) {
        eddy_err e = take_err(lerr, err, errlen);
        store_close(s);
        return e;
    }
    s->ropts = leveldb_readoptions_create();
    s->wsync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->wsync, 1);
    s->wnosync = leveldb_writeoptions_create();
    *out = s;
    return EDDY_OK;
}

void store_close(store *s)
{
    if (!s)
        return;
    if (s->db)
        leveldb_close(s->db);
    if (s->ropts)
        leveldb_readoptions_destroy(s->ropts);
    if (s->wsync)
        leveldb_writeoptions_destroy(s->wsync);
    if (s->wnosync)
        leveldb_writeoptions_destroy(s->wnosync);
    leveldb_options_destroy(s->opts);
    leveldb_cache_destroy(s->cache);
    leveldb_filterpolicy_destroy(s->filter);
    free(s);
}

eddy_err store_get(store *s, const struct store_key *key, char **val, size_t *vlen)
{
    char *lerr = NULL;
    *val = leveldb_get(s->db, s->ropts, (const char *)key->buf, key->len, vlen, &lerr);
    return take_err(lerr, NULL, 0);
}

static eddy_err decode(const ProtobufCMessageDescriptor *desc, const char *val, size_t vlen,
                       ProtobufCMessage **msg)
{
    *msg = protobuf_c_message_unpack(desc, NULL, vlen, (const uint8_t *)val);
    if (!*msg) {
        log_error("msg=\"stored value does not decode\" type=%s", desc->name);
        return EDDY_ERR_CORRUPT;
    }
    return EDDY_OK;
}

eddy_err store_get_msg(store *s, const struct store_key *key,
                       const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    char *val = NULL;
    size_t vlen = 0;
    *msg = NULL;
    eddy_err e = store_get(s, key, &val, &vlen);
    if (e == EDDY_OK && val)
        e = decode(desc, val, vlen, msg);
    leveldb_free(val);
    return e;
}

static bool key_before_end(const char *k, size_t klen, const struct store_key *end)
{
    if (end->len == 0)
        return true;
    size_t n = klen < end->len ? klen : end->len;
    int c = memcmp(k, end->buf, n);
    return c < 0 || (c == 0 && klen < end->len);
}

static eddy_err scan_with(leveldb_t *db, const leveldb_readoptions_t *ropts,
                          const struct store_key *start, const struct store_key *end,
                          store_scan_fn *fn, void *ud)
{
    leveldb_iterator_t *it = leveldb_create_iterator(db, ropts);
    leveldb_iter_seek(it, (const char *)start->buf, start->len);
    for (; leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = leveldb_iter_key(it, &klen);
        if (!key_before_end(k, klen, end))
            break;
        const char *v = leveldb_iter_value(it, &vlen);
        if (fn(ud, (const unsigned char *)k, klen, v, vlen) != 0)
            break;
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    return take_err(lerr, NULL, 0);
}

eddy_err store_scan(store *s, const struct store_key *start, const struct store_key *end,
                    store_scan_fn *fn, void *ud)
{
    return scan_with(s->db, s->ropts, start, end, fn, ud);
}

eddy_err store_delete(store *s, const struct store_key *key)
{
    char *lerr = NULL;
    leveldb_delete(s->db, s->wnosync, (const char *)key->buf, key->len, &lerr);
    return take_err(lerr, NULL, 0);
}

uint64_t store_approximate_size(store *s)
{
    const char *start = "";
    const char *limit = "\xff\xff\xff\xff";
    size_t sl = 0, ll = 4;
    uint64_t size = 0;
    leveldb_approximate_sizes(s->db, 1, &start, &sl, &limit, &ll, &size);
    return size;
}

eddy_err store_dump(store *s, uint32_t tables, void *out_file)
{
    FILE *out = out_file;
    leveldb_iterator_t *it = leveldb_create_iterator(s->db, s->ropts);
    for (leveldb_iter_seek_to_first(it); leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen, vlen;
        const unsigned char *k = (const unsigned char *)leveldb_iter_key(it, &klen);
        const unsigned char *v = (const unsigned char *)leveldb_iter_value(it, &vlen);
        if (klen < 3 || k[2] >= 32 || !(tables & (UINT32_C(1) << k[2])))
            continue;
        for (size_t i = 0; i < klen; i++)
            fprintf(out, "%02x", k[i]);
        fputc(' ', out);
        for (size_t i = 0; i < vlen; i++)
            fprintf(out, "%02x", v[i]);
        fputc('\n', out);
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    return take_err(lerr, NULL, 0);
}

/* ---- snapshots ----------------------------------------------------------------------- */

struct store_snapshot {
    store *s;
    const leveldb_snapshot_t *snap;
    leveldb_readoptions_t *ropts;
};

store_snapshot *store_snapshot_new(store *s)
{
    store_snapshot *sn = calloc(1, sizeof(*sn));
    if (!sn)
        return NULL;
    sn->s = s;
    sn->snap = leveldb_create_snapshot(s->db);
    sn->ropts = leveldb_readoptions_create();
    leveldb_readoptions_set_snapshot(sn->ropts, sn->snap);
    leveldb_readoptions_set_verify_checksums(sn->ropts, 1);
    leveldb_readoptions_set_fill_cache(sn->ropts, 0);
    return sn;
}

void store_snapshot_free(store_snapshot *sn)
{
    if (!sn)
        return;
    if (sn->ropts)
        leveldb_readoptions_destroy(sn->ropts);
    if (sn->snap)
        leveldb_release_snapshot(sn->s->db, sn->snap);
    free(sn);
}

eddy_err store_snapshot_get_msg(store_snapshot *sn, const struct store_key *key,
                                const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    char *lerr = NULL;
    size_t vlen = 0;
    *msg = NULL;
    char *val = leveldb_get(sn->s->db, sn->ropts, (const char *)key->buf, key->len, &vlen, &lerr);
    eddy_err e = take_err(lerr, NULL, 0);
    if (e == EDDY_OK && val)
        e = decode(desc, val, vlen, msg);
    leveldb_free(val);
    return e;
}

eddy_err store_snapshot_scan(store_snapshot *sn, const struct store_key *start,
                             const struct store_key *end, store_scan_fn *fn, void *ud)
{
    return scan_with(sn->s->db, sn->ropts, start, end, fn, ud);
}

/* ---- replacing a key range ------------------------------------------------------------ */

struct store_batch {
    leveldb_writebatch_t *wb;
    size_t n;
    struct store_key lo, hi; /* smallest and largest key put (valid when n > 0) */
};

store_batch *store_batch_new(void)
{
    store_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->wb = leveldb_writebatch_create();
    return b;
}

void store_batch_free(store_batch *b)
{
    if (!b)
        return;
    if (b->wb)
        leveldb_writebatch_destroy(b->wb);
    free(b);
}

static int cmp_raw(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen);

eddy_err store_batch_put(store_batch *b, const void *key, size_t klen, const void *val,
                         size_t vlen)
{
    if (klen == 0 || klen > STORE_KEY_MAX)
        return EDDY_ERR_INVALID;
    leveldb_writebatch_put(b->wb, key, klen, val, vlen);
    if (b->n == 0 || cmp_raw(key, klen, b->lo.buf, b->lo.len) < 0) {
        memcpy(b->lo.buf, key, klen);
        b->lo.len = klen;
    }
    if (b->n == 0 || cmp_raw(key, klen, b->hi.buf, b->hi.len) > 0) {
        memcpy(b->hi.buf, key, klen);
        b->hi.len = klen;
    }
    b->n++;
    return EDDY_OK;
}

size_t store_batch_count(const store_batch *b)
{
    return b->n;
}

eddy_err store_replace_range(store *s, const struct store_key *start, const struct store_key *end,
                             const store_batch *b, uint64_t *deleted)
{
    if (deleted)
        *deleted = 0;
    if (b->n > 0 && (cmp_raw(b->lo.buf, b->lo.len, start->buf, start->len) < 0 ||
                     !key_before_end((const char *)b->hi.buf, b->hi.len, end))) {
        log_error("msg=\"replace range: a put lies outside the range\"");
        return EDDY_ERR_INVALID;
    }
    /* Deletes first, puts after: within one batch the later operation on a key wins. */
    leveldb_writebatch_t *wb = leveldb_writebatch_create();
    leveldb_iterator_t *it = leveldb_create_iterator(s->db, s->ropts);
    uint64_t n = 0;
    leveldb_iter_seek(it, (const char *)start->buf, start->len);
    for (; leveldb_iter_valid(it); leveldb_iter_next(it)) {
        size_t klen;
        const char *k = leveldb_iter_key(it, &klen);
        if (!key_before_end(k, klen, end))
            break;
        leveldb_writebatch_delete(wb, k, klen);
        n++;
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    eddy_err err = take_err(lerr, NULL, 0);
    if (err == EDDY_OK) {
        leveldb_writebatch_append(wb, b->wb);
        leveldb_write(s->db, s->wsync, wb, &lerr);
        err = take_err(lerr, NULL, 0);
    }
    leveldb_writebatch_destroy(wb);
    if (err == EDDY_OK && deleted)
        *deleted = n;
    return err;
}

/* ---- transactions -------------------------------------------------------------------- */

struct overlay_entry {
    unsigned char *key; /* NULL = empty slot */
    size_t klen;
    char *val;          /* NULL with deleted = true for a delete; stale while obj_dirty */
    size_t vlen;
    bool deleted;
    ProtobufCMessage *obj; /* decoded value (store_txn_obj_*), owned by the entry */
    bool obj_dirty;        /* obj changed: packed into the batch at commit */
};

static void entry_drop_obj(struct overlay_entry *e)
{
    if (e->obj)
        protobuf_c_message_free_unpacked(e->obj, NULL);
    e->obj = NULL;
    e->obj_dirty = false;
}

/* Bring e->val up to date with a dirty object (for byte readers and scans). */
static eddy_err entry_pack(struct overlay_entry *e)
{
    if (!e->obj_dirty || !e->obj)
        return EDDY_OK;
    size_t n = protobuf_c_message_get_packed_size(e->obj);
    char *v = malloc(n ? n : 1);
    if (!v)
        return EDDY_ERR_NOMEM;
    protobuf_c_message_pack(e->obj, (uint8_t *)v);
    free(e->val);
    e->val = v;
    e->vlen = n;
    return EDDY_OK;
}

struct store_txn {
    store *s;
    leveldb_writebatch_t *wb;
    struct overlay_entry *tab; /* open addressing, power-of-two capacity */
    size_t cap, used;
};

store_txn *store_txn_new(store *s)
{
    store_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->s = s;
    t->wb = leveldb_writebatch_create();
    t->cap = 1024;
    t->tab = calloc(t->cap, sizeof(*t->tab));
    if (!t->tab) {
        store_txn_free(t);
        return NULL;
    }
    return t;
}

void store_txn_reset(store_txn *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        free(t->tab[i].key);
        free(t->tab[i].val);
        entry_drop_obj(&t->tab[i]);
    }
    memset(t->tab, 0, t->cap * sizeof(*t->tab));
    t->used = 0;
    leveldb_writebatch_clear(t->wb);
}

void store_txn_free(store_txn *t)
{
    if (!t)
        return;
    if (t->tab)
        store_txn_reset(t);
    free(t->tab);
    if (t->wb)
        leveldb_writebatch_destroy(t->wb);
    free(t);
}

size_t store_txn_pending(const store_txn *t)
{
    return t->used;
}

static struct overlay_entry *slot(struct overlay_entry *tab, size_t cap, const unsigned char *k,
                                  size_t klen)
{
    size_t i = (size_t)XXH3_64bits(k, klen) & (cap - 1);
    for (;;) {
        struct overlay_entry *e = &tab[i];
        if (!e->key || (e->klen == klen && memcmp(e->key, k, klen) == 0))
            return e;
        i = (i + 1) & (cap - 1);
    }
}

static eddy_err grow(store_txn *t)
{
    size_t ncap = t->cap * 2;
    struct overlay_entry *ntab = calloc(ncap, sizeof(*ntab));
    if (!ntab)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->tab[i].key)
            *slot(ntab, ncap, t->tab[i].key, t->tab[i].klen) = t->tab[i];
    }
    free(t->tab);
    t->tab = ntab;
    t->cap = ncap;
    return EDDY_OK;
}

static eddy_err overlay_set(store_txn *t, const struct store_key *key, const void *val,
                            size_t vlen, bool deleted)
{
    if ((t->used + 1) * 2 > t->cap && grow(t) != EDDY_OK)
        return EDDY_ERR_NOMEM;
    struct overlay_entry *e = slot(t->tab, t->cap, key->buf, key->len);
    char *copy = NULL;
    if (!deleted) {
        copy = malloc(vlen ? vlen : 1);
        if (!copy)
            return EDDY_ERR_NOMEM;
        memcpy(copy, val, vlen);
    }
    if (!e->key) {
        e->key = malloc(key->len);
        if (!e->key) {
            free(copy);
            return EDDY_ERR_NOMEM;
        }
        memcpy(e->key, key->buf, key->len);
        e->klen = key->len;
        t->used++;
    }
    free(e->val);
    e->val = copy;
    e->vlen = vlen;
    e->deleted = deleted;
    entry_drop_obj(e); /* bytes written directly replace any decoded object */
    return EDDY_OK;
}

eddy_err store_txn_get(store_txn *t, const struct store_key *key, const char **val,
                       size_t *vlen, bool *found)
{
    struct overlay_entry *e = slot(t->tab, t->cap, key->buf, key->len);
    if (e->key) {
        eddy_err err = entry_pack(e);
        if (err != EDDY_OK)
            return err;
        *found = !e->deleted;
        *val = e->val;
        *vlen = e->vlen;
        return EDDY_OK;
    }
    /* Not in the overlay: read the committed value and cache it, so the pointer stays
     * valid until the txn is committed or reset. */
    char *v = NULL;
    size_t n = 0;
    eddy_err err = store_get(t->s, key, &v, &n);
    if (err != EDDY_OK)
        return err;
    if (!v) {
        *found = false;
        *val = NULL;
        *vlen = 0;
        return EDDY_OK;
    }
    /* cache as a "put" of the same value without adding it to the batch */
    if ((t->used + 1) * 2 > t->cap && grow(t) != EDDY_OK) {
        leveldb_free(v);
        return EDDY_ERR_NOMEM;
    }
    e = slot(t->tab, t->cap, key->buf, key->len);
    e->key = malloc(key->len);
    e->val = malloc(n ? n : 1);
    if (!e->key || !e->val) {
        free(e->key);
        free(e->val);
        e->key = NULL;
        e->val = NULL;
        leveldb_free(v);
        return EDDY_ERR_NOMEM;
    }
    memcpy(e->key, key->buf, key->len);
    e->klen = key->len;
    memcpy(e->val, v, n);
    e->vlen = n;
    e->deleted = false;
    t->used++;
    leveldb_free(v);
    *found = true;
    *val = e->val;
    *vlen = n;
    return EDDY_OK;
}

eddy_err store_txn_get_msg(store_txn *t, const struct store_key *key,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **msg)
{
    const char *val;
    size_t vlen;
    bool found;
    *msg = NULL;
    eddy_err err = store_txn_get(t, key, &val, &vlen, &found);
    if (err != EDDY_OK || !found)
        return err;
    return decode(desc, val, vlen, msg);
}

eddy_err store_txn_put(store_txn *t, const struct store_key *key, const void *val, size_t vlen)
{
    eddy_err err = overlay_set(t, key, val, vlen, false);
    if (err == EDDY_OK)
        leveldb_writebatch_put(t->wb, (const char *)key->buf, key->len, val, vlen);
    return err;
}

eddy_err store_txn_put_msg(store_txn *t, const struct store_key *key, const ProtobufCMessage *msg)
{
    uint8_t stackbuf[4096];
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = n <= sizeof(stackbuf) ? stackbuf : malloc(n);
    if (!buf)
        return EDDY_ERR_NOMEM;
    protobuf_c_message_pack(msg, buf);
    eddy_err err = store_txn_put(t, key, buf, n);
    if (buf != stackbuf)
        free(buf);
    return err;
}

eddy_err store_txn_del(store_txn *t, const struct store_key *key)
{
    eddy_err err = overlay_set(t, key, NULL, 0, true);
    if (err == EDDY_OK)
        leveldb_writebatch_delete(t->wb, (const char *)key->buf, key->len);
    return err;
}

struct key_list {
    struct store_key *keys;
    size_t n, cap;
    eddy_err err;
};

static int collect_key(void *ud, const unsigned char *k, size_t klen, const char *v, size_t vlen)
{
    struct key_list *l = ud;
    if (klen > STORE_KEY_MAX)
        return 0;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 16;
        struct store_key *nk = realloc(l->keys, ncap * sizeof(*nk));
        if (!nk) {
            l->err = EDDY_ERR_NOMEM;
            return 1;
        }
        l->keys = nk;
        l->cap = ncap;
    }
    memcpy(l->keys[l->n].buf, k, klen);
    l->keys[l->n].len = klen;
    l->n++;
    return 0;
}

eddy_err store_txn_del_range(store_txn *t, const struct store_key *start,
                             const struct store_key *end, uint64_t *n)
{
    /* Collect first: deleting while scanning would reshape the overlay under the scan. */
    struct key_list l = {NULL, 0, 0, EDDY_OK};
    eddy_err err = store_txn_scan(t, start, end, collect_key, &l);
    if (err == EDDY_OK)
        err = l.err;
    for (size_t i = 0; i < l.n && err == EDDY_OK; i++)
        err = store_txn_del(t, &l.keys[i]);
    if (n)
        *n = err == EDDY_OK ? l.n : 0;
    free(l.keys);
    return err;
}

eddy_err store_txn_obj_get(store_txn *t, const struct store_key *key,
                           const ProtobufCMessageDescriptor *desc, ProtobufCMessage **obj)
{
    const char *val;
    size_t vlen;
    bool found;
    *obj = NULL;
    struct overlay_entry *e = slot(t->tab, t->cap, key->buf, key->len);
    if (e->key && e->obj) {
        *obj = e->deleted ? NULL : e->obj;
        return EDDY_OK;
    }
    eddy_err err = store_txn_get(t, key, &val, &vlen, &found); /* caches the bytes */
    if (err != EDDY_OK || !found)
        return err;
    ProtobufCMessage *m = NULL;
    if ((err = decode(desc, val, vlen, &m)) != EDDY_OK)
        return err;
    e = slot(t->tab, t->cap, key->buf, key->len); /* the get may have grown the table */
    e->obj = m;
    e->obj_dirty = false;
    *obj = m;
    return EDDY_OK;
}

eddy_err store_txn_obj_set(store_txn *t, const struct store_key *key, ProtobufCMessage *obj)
{
    if ((t->used + 1) * 2 > t->cap && grow(t) != EDDY_OK) {
        protobuf_c_message_free_unpacked(obj, NULL);
        return EDDY_ERR_NOMEM;
    }
    struct overlay_entry *e = slot(t->tab, t->cap, key->buf, key->len);
    if (!e->key) {
        e->key = malloc(key->len);
        if (!e->key) {
            protobuf_c_message_free_unpacked(obj, NULL);
            return EDDY_ERR_NOMEM;
        }
        memcpy(e->key, key->buf, key->len);
        e->klen = key->len;
        t->used++;
    }
    if (e->obj != obj)
        entry_drop_obj(e);
    e->obj = obj;
    e->obj_dirty = true;
    e->deleted = false;
    return EDDY_OK;
}

eddy_err store_txn_commit(store_txn *t, bool sync)
{
    char *lerr = NULL;
    /* objects changed in place go into the batch now, once each, after every earlier op
     * on their key (a later put or delete of the key would have dropped the object) */
    for (size_t i = 0; i < t->cap; i++) {
        struct overlay_entry *e = &t->tab[i];
        if (!e->key || !e->obj_dirty)
            continue;
        eddy_err err = entry_pack(e);
        if (err != EDDY_OK) {
            store_txn_reset(t);
            return err;
        }
        leveldb_writebatch_put(t->wb, (const char *)e->key, e->klen, e->val, e->vlen);
    }
    leveldb_write(t->s->db, sync ? t->s->wsync : t->s->wnosync, t->wb, &lerr);
    store_txn_reset(t);
    return take_err(lerr, NULL, 0);
}

static int cmp_entry_key(const void *a, const void *b)
{
    const struct overlay_entry *x = *(const struct overlay_entry *const *)a;
    const struct overlay_entry *y = *(const struct overlay_entry *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    if (c != 0)
        return c;
    return x->klen < y->klen ? -1 : x->klen > y->klen;
}

static int cmp_raw(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

eddy_err store_txn_scan(store_txn *t, const struct store_key *start, const struct store_key *end,
                        store_scan_fn *fn, void *ud)
{
    /* Pending entries in range, sorted. */
    size_t n = 0;
    struct overlay_entry **pend = malloc((t->used ? t->used : 1) * sizeof(*pend));
    if (!pend)
        return EDDY_ERR_NOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        struct overlay_entry *e = &t->tab[i];
        if (!e->key || cmp_raw(e->key, e->klen, start->buf, start->len) < 0 ||
            !key_before_end((const char *)e->key, e->klen, end))
            continue;
        if (entry_pack(e) != EDDY_OK) {
            free(pend);
            return EDDY_ERR_NOMEM;
        }
        pend[n++] = e;
    }
    qsort(pend, n, sizeof(*pend), cmp_entry_key);

    leveldb_iterator_t *it = leveldb_create_iterator(t->s->db, t->s->ropts);
    leveldb_iter_seek(it, (const char *)start->buf, start->len);
    size_t j = 0;
    int stop = 0;
    while (!stop) {
        const unsigned char *k = NULL;
        size_t klen = 0;
        if (leveldb_iter_valid(it)) {
            k = (const unsigned char *)leveldb_iter_key(it, &klen);
            if (!key_before_end((const char *)k, klen, end))
                k = NULL;
        }
        if (!k && j == n)
            break;
        int c = !k ? 1 : j == n ? -1 : cmp_raw(k, klen, pend[j]->key, pend[j]->klen);
        if (c < 0) { /* committed only */
            size_t vlen;
            const char *v = leveldb_iter_value(it, &vlen);
            stop = fn(ud, k, klen, v, vlen);
            leveldb_iter_next(it);
        } else { /* pending wins (and hides a committed twin) */
            if (!pend[j]->deleted)
                stop = fn(ud, pend[j]->key, pend[j]->klen, pend[j]->val, pend[j]->vlen);
            if (c == 0)
                leveldb_iter_next(it);
            j++;
        }
    }
    char *lerr = NULL;
    leveldb_iter_get_error(it, &lerr);
    leveldb_iter_destroy(it);
    free(pend);
    return take_err(lerr, NULL, 0);
}
