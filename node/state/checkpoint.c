/* Checkpoint files: write a partition from one snapshot, verify, load, list and prune
 * (format in checkpoint.h). Reading is streaming and bounded: every length field is checked
 * against what is left of the file before it is used, so a corrupt file cannot make us
 * allocate or read past its end. */
#include "node/state/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "common/clock.h"
#include "common/crc32c.h"
#include "common/log.h"
#include "eddy/v1/store.pb-c.h"

#define WRITE_BUF (256u << 10)     /* also the largest chunk of an encrypted file */
#define CHUNK_HEAD (4u + CKPTKEY_NONCE_LEN)
#define CHUNK_LAST 0x80000000u     /* in a chunk's length field: the file's last chunk */
#define CHUNK_AAD (CHECKPOINT_HEADER_LEN + 12u)

/* ---- little-endian fields ------------------------------------------------------------- */

static void put_le(unsigned char *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

/* The key range of partition 'p': every key starting with its big-endian u16. */
static void partition_range(uint32_t p, struct store_key *start, struct store_key *end)
{
    start->len = 0;
    key_u16(start, (uint16_t)p);
    key_prefix_end(start, end);
}

/* The associated data of chunk 'index': the file's header, the index, the length field;
 * so no chunk can be moved, dropped, cut or marked last in another place or file. */
static void chunk_aad(const unsigned char *hdr, uint64_t index, uint32_t lenf,
                      unsigned char aad[CHUNK_AAD])
{
    memcpy(aad, hdr, CHECKPOINT_HEADER_LEN);
    put_le(aad + CHECKPOINT_HEADER_LEN, index, 8);
    put_le(aad + CHECKPOINT_HEADER_LEN + 8, lenf, 4);
}

/* ---- writing -------------------------------------------------------------------------- */

struct writer {
    const struct ckptkey *key;  /* NULL: a plain file */
    unsigned char *sealed;      /* one sealed chunk (with a key) */
    unsigned char ehdr[CHECKPOINT_HEADER_LEN]; /* the encrypted file's header */
    uint64_t chunks;            /* sealed so far */
    bool last;                  /* the next flush is the file's last */
    uint64_t written;           /* bytes out (file or sink): the file's length */
    int fd;                     /* the file, or -1 when 'sink' takes the bytes */
    checkpoint_sink_fn *sink;
    void *sink_ud;
    const char *path;
    unsigned char *buf;
    size_t len;
    size_t crc_len; /* of buf[0, len): the bytes already in 'crc' */
    uint64_t off;   /* bytes written so far (buffered included) */
    uint32_t crc;   /* of all bytes so far but the CRC field, up to buf + crc_len */
    uint64_t records;
    uint32_t partition;
    int64_t deadline_ms; /* clock_mono_ms; 0: none */
    eddy_err err;
};

/* Bring the CRC up to the end of the buffer: one call per buffer, not per field (the
 * instruction runs at full speed on long runs; per call it costs more than it hashes). */
static void w_crc(struct writer *w)
{
    w->crc = crc32c_update(w->crc, w->buf + w->crc_len, w->len - w->crc_len);
    w->crc_len = w->len;
}

/* 'n' bytes to the file or the sink, as they will be stored. */
static void w_out(struct writer *w, const unsigned char *b, size_t n)
{
    if (w->err != EDDY_OK || n == 0)
        return;
    w->written += n;
    if (w->sink) {
        w->err = w->sink(w->sink_ud, b, n);
        return;
    }
    size_t done = 0;
    while (w->err == EDDY_OK && done < n) {
        ssize_t r = write(w->fd, b + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            log_error("msg=\"checkpoint write failed\" path=%s error=\"%s\"", w->path,
                      r < 0 ? strerror(errno) : "short write");
            w->err = EDDY_ERR_IO;
            break;
        }
        done += (size_t)r;
    }
}

/* The buffer as the next sealed chunk; the encrypted header goes out before the first. */
static void w_seal(struct writer *w)
{
    if (w->err != EDDY_OK)
        return;
    if (w->chunks == 0)
        w_out(w, w->ehdr, sizeof(w->ehdr));
    uint32_t lenf = (uint32_t)w->len | (w->last ? CHUNK_LAST : 0);
    unsigned char aad[CHUNK_AAD];
    chunk_aad(w->ehdr, w->chunks, lenf, aad);
    unsigned char *c = w->sealed;
    put_le(c, lenf, 4);
    eddy_err err = ckptkey_seal(w->key, aad, sizeof(aad), w->buf, w->len, c + 4, c + CHUNK_HEAD,
                                c + CHUNK_HEAD + w->len);
    if (err != EDDY_OK) {
        log_error("msg=\"checkpoint: encryption failed\" path=%s", w->path);
        w->err = err;
        return;
    }
    w->chunks++;
    w_out(w, c, CHUNK_HEAD + w->len + CKPTKEY_TAG_LEN);
}

static void w_flush(struct writer *w)
{
    w_crc(w);
    if (w->len > 0 && w->key)
        w_seal(w);
    else
        w_out(w, w->buf, w->len);
    w->len = w->crc_len = 0;
}

/* The buffers, and with a key the encrypted header (a random file id in it). */
static eddy_err w_init(struct writer *w, const struct ckptkey *key)
{
    w->key = key;
    w->buf = malloc(WRITE_BUF);
    if (!w->buf)
        return EDDY_ERR_NOMEM;
    if (!key)
        return EDDY_OK;
    w->sealed = malloc(CHUNK_HEAD + WRITE_BUF + CKPTKEY_TAG_LEN);
    if (!w->sealed)
        return EDDY_ERR_NOMEM;
    unsigned char *h = w->ehdr;
    memcpy(h, CHECKPOINT_MAGIC_ENCRYPTED, 8);
    put_le(h + 8, CHECKPOINT_VERSION, 4);
    put_le(h + 12, w->partition, 2);
    put_le(h + 14, 0, 2);
    memcpy(h + 16, key->id, CKPTKEY_ID_LEN);
    return RAND_bytes(h + 24, 8) == 1 ? EDDY_OK : EDDY_ERR_IO;
}

static void w_release(struct writer *w)
{
    free(w->buf);
    free(w->sealed);
}

/* Append 'n' bytes, counted in the CRC. */
static void w_put(struct writer *w, const void *p, size_t n)
{
    w->off += n;
    const unsigned char *src = p;
    while (n > 0 && w->err == EDDY_OK) {
        if (w->len == WRITE_BUF)
            w_flush(w);
        size_t c = WRITE_BUF - w->len < n ? WRITE_BUF - w->len : n;
        memcpy(w->buf + w->len, src, c);
        w->len += c;
        src += c;
        n -= c;
    }
}

/* Append the CRC field: the CRC of every byte before it, and not counted itself. */
static void w_put_crc(struct writer *w)
{
    unsigned char b[4];
    w_crc(w);
    put_le(b, w->crc, 4);
    if (w->len + sizeof(b) > WRITE_BUF)
        w_flush(w);
    memcpy(w->buf + w->len, b, sizeof(b));
    w->len += sizeof(b);
    w->crc_len = w->len;
    w->off += sizeof(b);
}

static void w_u32(struct writer *w, uint32_t v)
{
    unsigned char b[4];
    put_le(b, v, 4);
    w_put(w, b, 4);
}

/* klen, key, vlen, value; in one copy when the record fits in the buffer (most do). */
static void w_record(struct writer *w, const unsigned char *key, size_t klen, const char *val,
                     size_t vlen)
{
    size_t n = 8 + klen + vlen;
    if (WRITE_BUF - w->len < n) {
        w_u32(w, (uint32_t)klen);
        w_put(w, key, klen);
        w_u32(w, (uint32_t)vlen);
        w_put(w, val, vlen);
        return;
    }
    unsigned char *d = w->buf + w->len;
    put_le(d, klen, 4);
    memcpy(d + 4, key, klen);
    put_le(d + 4 + klen, vlen, 4);
    memcpy(d + 8 + klen, val, vlen);
    w->len += n;
    w->off += n;
}

static int write_record(void *ud, const unsigned char *key, size_t klen, const char *val,
                        size_t vlen)
{
    struct writer *w = ud;
    if (klen < 3 || klen > STORE_KEY_MAX || vlen > CHECKPOINT_VALUE_MAX) {
        /* The reader would reject it: refuse to publish a file that cannot be loaded. */
        log_error("msg=\"checkpoint: record over the format's limits\" partition=%" PRIu32
                  " klen=%zu vlen=%zu",
                  w->partition, klen, vlen);
        w->err = EDDY_ERR_TOO_LARGE;
        return 1;
    }
    w_record(w, key, klen, val, vlen);
    w->records++;
    if (w->deadline_ms > 0 && w->err == EDDY_OK && (w->records & 1023) == 0 &&
        clock_mono_ms() >= w->deadline_ms)
        w->err = EDDY_ERR_TIMEOUT;
    return w->err == EDDY_OK ? 0 : 1;
}

static eddy_err fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        log_error("msg=\"checkpoint: fsync of directory failed\" dir=%s error=\"%s\"", dir,
                  strerror(errno));
        if (fd >= 0)
            close(fd);
        return EDDY_ERR_IO;
    }
    close(fd);
    return EDDY_OK;
}

/* fsync the directory holding 'path', so that a rename into it is durable. */
static eddy_err fsync_dir_of(const char *path)
{
    char dir[CHECKPOINT_PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    return fsync_dir(dir);
}

/* Header, the partition's records as of 'snap', footer: everything but the last flush. */
static eddy_err write_body(store_snapshot *snap, uint32_t p, uint64_t seq, struct writer *w,
                           int64_t *created, uint64_t *total)
{
    unsigned char h[CHECKPOINT_HEADER_LEN];
    *created = clock_wall_ms();
    memcpy(h, CHECKPOINT_MAGIC, 8);
    put_le(h + 8, CHECKPOINT_VERSION, 4);
    put_le(h + 12, p, 2);
    put_le(h + 14, 0, 2);
    put_le(h + 16, (uint64_t)*created, 8);
    put_le(h + 24, seq, 8);
    w_put(w, h, sizeof(h));

    struct store_key start, end;
    partition_range(p, &start, &end);
    eddy_err err = store_snapshot_scan(snap, &start, &end, write_record, w);
    if (err == EDDY_OK)
        err = w->err;
    if (err != EDDY_OK)
        return err;

    unsigned char f[CHECKPOINT_FOOTER_LEN];
    *total = w->off + CHECKPOINT_FOOTER_LEN;
    put_le(f, 0, 4);
    put_le(f + 4, w->records, 8);
    put_le(f + 12, *total, 8);
    w_put(w, f, 20);
    w_put_crc(w);
    w->last = true;
    w_flush(w);
    return w->err;
}

/* The META next_seq of partition p as of 'snap' (0: no META) and, if 'events' is not
 * NULL, the events META counts as applied (logged: a handover's checkpoints can then be
 * compared with the state restored from them). */
static eddy_err snapshot_seq(store_snapshot *snap, uint32_t p, uint64_t *seq, uint64_t *events)
{
    Eddy__Store__V1__PartitionMeta *pm = NULL;
    struct store_key k;
    key_init(&k, p, T_META);
    eddy_err err = store_snapshot_get_msg(snap, &k, &eddy__store__v1__partition_meta__descriptor,
                                          (ProtobufCMessage **)&pm);
    *seq = pm ? pm->next_seq : 0;
    if (events)
        *events = pm ? pm->events : 0;
    if (pm)
        protobuf_c_message_free_unpacked(&pm->base, NULL);
    return err;
}

/* Write the partition as of 'snap' to 'path' (or, if path is NULL, to its canonical name
 * in 'dir', which needs the snapshot's seq). */
static eddy_err write_from_snapshot(const struct ckptkey *key, store_snapshot *snap, uint32_t p,
                                    const char *path, const char *dir, int64_t deadline_ms,
                                    struct checkpoint_info *out)
{
    eddy_err err;
    struct writer w = {.fd = -1, .partition = p, .deadline_ms = deadline_ms, .err = EDDY_OK};
    char final[CHECKPOINT_PATH_MAX], tmp[CHECKPOINT_PATH_MAX];
    bool tmp_exists = false;
    uint64_t seq, events;
    if ((err = snapshot_seq(snap, p, &seq, &events)) != EDDY_OK)
        goto out;

    if (path) {
        if (snprintf(final, sizeof(final), "%s", path) >= (int)sizeof(final)) {
            err = EDDY_ERR_TOO_LARGE;
            goto out;
        }
    } else if ((err = checkpoint_path(final, sizeof(final), dir, p, seq)) != EDDY_OK) {
        goto out;
    }
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", final) >= (int)sizeof(tmp)) {
        err = EDDY_ERR_TOO_LARGE;
        goto out;
    }
    w.path = tmp;
    if ((err = w_init(&w, key)) != EDDY_OK)
        goto out;
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        log_error("msg=\"checkpoint: cannot create\" path=%s error=\"%s\"", tmp, strerror(errno));
        err = errno == ENOENT ? EDDY_ERR_NOT_FOUND : EDDY_ERR_IO;
        goto out;
    }
    tmp_exists = true;

    int64_t created;
    uint64_t total;
    if ((err = write_body(snap, p, seq, &w, &created, &total)) != EDDY_OK)
        goto out;
    if (fsync(w.fd) != 0) {
        log_error("msg=\"checkpoint: fsync failed\" path=%s error=\"%s\"", tmp, strerror(errno));
        err = EDDY_ERR_IO;
        goto out;
    }
    if (deadline_ms > 0 && clock_mono_ms() >= deadline_ms) {
        err = EDDY_ERR_TIMEOUT; /* too late: publish nothing */
        goto out;
    }
    int fd = w.fd;
    w.fd = -1;
    if (close(fd) != 0) {
        log_error("msg=\"checkpoint: close failed\" path=%s error=\"%s\"", tmp, strerror(errno));
        err = EDDY_ERR_IO;
        goto out;
    }
    if (rename(tmp, final) != 0) {
        log_error("msg=\"checkpoint: rename failed\" from=%s to=%s error=\"%s\"", tmp, final,
                  strerror(errno));
        err = EDDY_ERR_IO;
        goto out;
    }
    tmp_exists = false;
    if ((err = fsync_dir_of(final)) != EDDY_OK)
        goto out;

    if (out) {
        memset(out, 0, sizeof(*out));
        out->partition = p;
        out->version = CHECKPOINT_VERSION;
        out->seq = seq;
        out->created_ms = created;
        out->records = w.records;
        out->bytes = w.written;
        out->crc = w.crc;
        out->encrypted = key != NULL;
        snprintf(out->path, sizeof(out->path), "%s", final);
    }
    log_info("msg=\"checkpoint written\" partition=%" PRIu32 " seq=%" PRIu64 " records=%" PRIu64
             " bytes=%" PRIu64 " events=%" PRIu64 " encrypted=%d path=%s",
             p, seq, w.records, w.written, events, key != NULL, final);

out:
    if (w.fd >= 0)
        close(w.fd);
    if (tmp_exists)
        unlink(tmp);
    w_release(&w);
    return err;
}

eddy_err checkpoint_path(char *buf, size_t n, const char *dir, uint32_t p, uint64_t seq)
{
    int r = snprintf(buf, n, "%s/p%05" PRIu32 "-%020" PRIu64 ".ckp", dir, p, seq);
    return r < 0 || (size_t)r >= n ? EDDY_ERR_TOO_LARGE : EDDY_OK;
}

/* A snapshot of partition p's keys, its rows still behind included (NULL: out of memory). */
static store_snapshot *partition_snapshot(store *s, uint32_t p)
{
    struct store_key start, end;
    partition_range(p, &start, &end);
    return store_snapshot_new_range(s, &start, &end);
}

static eddy_err write_common(const struct ckptkey *key, store *s, uint32_t p, const char *path,
                             const char *dir, int64_t deadline_ms, struct checkpoint_info *out)
{
    if (p > UINT16_MAX)
        return EDDY_ERR_INVALID;
    store_snapshot *snap = partition_snapshot(s, p);
    if (!snap)
        return EDDY_ERR_NOMEM;
    eddy_err err = write_from_snapshot(key, snap, p, path, dir, deadline_ms, out);
    store_snapshot_free(snap);
    return err;
}

eddy_err checkpoint_stream(const struct ckptkey *key, store *s, uint32_t p,
                           checkpoint_sink_fn *sink, void *ud, struct checkpoint_info *out)
{
    if (p > UINT16_MAX || !sink)
        return EDDY_ERR_INVALID;
    store_snapshot *snap = partition_snapshot(s, p);
    struct writer w = {.fd = -1, .sink = sink, .sink_ud = ud, .path = "(stream)", .partition = p,
                       .err = EDDY_OK};
    uint64_t seq = 0, total = 0;
    int64_t created = 0;
    eddy_err err = snap ? w_init(&w, key) : EDDY_ERR_NOMEM;
    if (err == EDDY_OK)
        err = snapshot_seq(snap, p, &seq, NULL);
    if (err == EDDY_OK)
        err = write_body(snap, p, seq, &w, &created, &total);
    if (err == EDDY_OK && out) {
        memset(out, 0, sizeof(*out));
        *out = (struct checkpoint_info){.partition = p, .version = CHECKPOINT_VERSION, .seq = seq,
                                        .created_ms = created, .records = w.records,
                                        .bytes = w.written, .crc = w.crc,
                                        .encrypted = key != NULL};
    }
    w_release(&w);
    store_snapshot_free(snap);
    return err;
}

eddy_err checkpoint_write(const struct ckptkey *key, store *s, uint32_t p, const char *path,
                          struct checkpoint_info *out)
{
    return write_common(key, s, p, path, NULL, 0, out);
}

eddy_err checkpoint_write_dir(const struct ckptkey *key, store *s, uint32_t p, const char *dir,
                              struct checkpoint_info *out)
{
    return checkpoint_write_dir_until(key, s, p, dir, 0, out);
}

eddy_err checkpoint_write_dir_until(const struct ckptkey *key, store *s, uint32_t p,
                                    const char *dir, int64_t deadline_ms,
                                    struct checkpoint_info *out)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        log_error("msg=\"checkpoint: cannot create directory\" dir=%s error=\"%s\"", dir,
                  strerror(errno));
        return EDDY_ERR_IO;
    }
    return write_common(key, s, p, NULL, dir, deadline_ms, out);
}

/* ---- reading -------------------------------------------------------------------------- */

/* The incremental reader: a state machine over the format above. Fixed-size fields are
 * gathered in 'fix'; keys in 'key'; values in 'val' only when there is a record callback
 * (verifying streams them through the CRC). */
enum rstate { R_HEADER, R_KLEN, R_KEY, R_VLEN, R_VAL, R_FOOTER, R_DONE };

/* The outer layer: which file this is, and for an encrypted one where in its chunks. */
enum ostate { O_MAGIC, O_PLAIN, O_HEADER, O_CHUNK_HEAD, O_CHUNK, O_END };

struct checkpoint_reader {
    const char *what;
    const struct ckptkey *ckey; /* NULL: plain files only */
    enum ostate ost;
    uint64_t in_off;            /* bytes fed: the file's length at the end */
    unsigned char ehdr[CHECKPOINT_HEADER_LEN];
    unsigned char chead[CHUNK_HEAD];
    size_t oneed, ohave;        /* of the current outer field */
    uint32_t lenf;              /* the current chunk's length field */
    uint64_t chunks;            /* opened so far */
    unsigned char *sealed, *opened; /* one chunk, as stored and as opened */
    checkpoint_record_fn *fn;
    void *ud;
    enum rstate st;
    eddy_err err;
    uint64_t off;               /* bytes consumed */
    uint32_t crc;               /* of every byte consumed but the footer's CRC field */
    unsigned char fix[CHECKPOINT_HEADER_LEN];
    size_t need, have;          /* of the current field */
    uint32_t partition, version;
    int64_t created_ms;
    uint64_t seq, records;
    unsigned char key[STORE_KEY_MAX], prev[STORE_KEY_MAX];
    size_t klen, prevlen;
    unsigned char *val;
    size_t vlen, valcap;
    /* the whole key and value: in the caller's piece when it held the whole field (no
     * copy), else in 'key' / 'val' */
    const unsigned char *keyp, *valp;
};

static eddy_err corrupt(checkpoint_reader *r, const char *why)
{
    log_error("msg=\"checkpoint corrupt\" source=%s offset=%" PRIu64 " reason=\"%s\"", r->what,
              r->ost == O_PLAIN ? r->off : r->in_off, why);
    return r->err = EDDY_ERR_CORRUPT;
}

/* What the first 'n' bytes of a file say about its key, as key_mismatch words it: "" when
 * 'key' reads it (or it is too short to tell: damage the reader reports). */
static void header_key_check(const struct ckptkey *key, const unsigned char *h, size_t n,
                             char *why, size_t whylen)
{
    char file[CKPTKEY_ID_TEXT], mine[CKPTKEY_ID_TEXT] = "none";
    why[0] = '\0';
    if (key)
        ckptkey_id_text(key->id, mine);
    if (n >= 24 && memcmp(h, CHECKPOINT_MAGIC_ENCRYPTED, 8) == 0 &&
        (!key || memcmp(h + 16, key->id, CKPTKEY_ID_LEN) != 0)) {
        ckptkey_id_text(h + 16, file);
        snprintf(why, whylen, "encrypted with key %s, this node has %s", file, mine);
    } else if (n >= 8 && memcmp(h, CHECKPOINT_MAGIC, 8) == 0 && key) {
        snprintf(why, whylen, "not encrypted, this node has key %s and reads only encrypted "
                              "checkpoints", mine);
    }
}

/* The file and the node disagree on encryption: never read on (an empty or partial
 * restore would look like success). */
static eddy_err key_mismatch(checkpoint_reader *r)
{
    char why[160];
    header_key_check(r->ckey, r->ehdr, sizeof(r->ehdr), why, sizeof(why));
    log_error("msg=\"checkpoint %s%s\" source=%s", why,
              r->ckey ? "" : " (--checkpoint-key-file)", r->what);
    return r->err = EDDY_ERR_KEY;
}

static int cmp_keys(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    if (c != 0)
        return c;
    return alen < blen ? -1 : alen > blen;
}

checkpoint_reader *checkpoint_reader_new(const struct ckptkey *key, const char *what,
                                         checkpoint_record_fn *fn, void *ud)
{
    checkpoint_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->what = what;
    r->ckey = key;
    r->ost = O_MAGIC;
    r->oneed = 8;
    r->fn = fn;
    r->ud = ud;
    r->st = R_HEADER;
    r->need = CHECKPOINT_HEADER_LEN;
    return r;
}

void checkpoint_reader_free(checkpoint_reader *r)
{
    if (r) {
        free(r->val);
        free(r->sealed);
        free(r->opened);
    }
    free(r);
}

/* A whole fixed-size field is in r->fix (or the key in r->key): check it and move on. */
static eddy_err field_done(checkpoint_reader *r)
{
    switch (r->st) {
    case R_HEADER:
        if (memcmp(r->fix, CHECKPOINT_MAGIC, 8) != 0)
            return corrupt(r, "bad magic");
        r->version = (uint32_t)get_le(r->fix + 8, 4);
        if (r->version != CHECKPOINT_VERSION)
            return corrupt(r, "unsupported format version");
        r->partition = (uint32_t)get_le(r->fix + 12, 2);
        if (get_le(r->fix + 14, 2) != 0)
            return corrupt(r, "unknown flags");
        r->created_ms = (int64_t)get_le(r->fix + 16, 8);
        r->seq = get_le(r->fix + 24, 8);
        r->st = R_KLEN;
        r->need = 4;
        return EDDY_OK;
    case R_KLEN:
        r->klen = (size_t)get_le(r->fix, 4);
        if (r->klen == 0) { /* the end marker: records, bytes, crc follow */
            r->st = R_FOOTER;
            r->need = CHECKPOINT_FOOTER_LEN - 4;
            return EDDY_OK;
        }
        if (r->klen < 3 || r->klen > STORE_KEY_MAX)
            return corrupt(r, "bad key length");
        r->st = R_KEY;
        r->need = r->klen;
        return EDDY_OK;
    case R_KEY:
        if (r->keyp[0] != (r->partition >> 8) || r->keyp[1] != (r->partition & 0xffu))
            return corrupt(r, "key of another partition");
        if (r->records > 0 && cmp_keys(r->prev, r->prevlen, r->keyp, r->klen) >= 0)
            return corrupt(r, "keys out of order");
        r->st = R_VLEN;
        r->need = 4;
        return EDDY_OK;
    case R_VLEN:
        r->vlen = (size_t)get_le(r->fix, 4);
        if (r->vlen > CHECKPOINT_VALUE_MAX)
            return corrupt(r, "bad value length");
        if (r->fn && r->vlen > r->valcap) {
            unsigned char *nv = realloc(r->val, r->vlen);
            if (!nv)
                return r->err = EDDY_ERR_NOMEM;
            r->val = nv;
            r->valcap = r->vlen;
        }
        r->st = R_VAL;
        r->need = r->vlen;
        return EDDY_OK;
    case R_VAL:
        if (r->fn) {
            eddy_err err = r->fn(r->ud, r->keyp, r->klen, r->valp, r->vlen);
            if (err != EDDY_OK)
                return r->err = err;
        }
        memcpy(r->prev, r->keyp, r->klen);
        r->prevlen = r->klen;
        r->records++;
        r->st = R_KLEN;
        r->need = 4;
        return EDDY_OK;
    case R_FOOTER:
        if (get_le(r->fix, 8) != r->records)
            return corrupt(r, "record count does not match");
        if (get_le(r->fix + 8, 8) != r->off)
            return corrupt(r, "length does not match");
        if ((uint32_t)get_le(r->fix + 16, 4) != r->crc)
            return corrupt(r, "CRC32C mismatch");
        r->st = R_DONE;
        return EDDY_OK;
    case R_DONE:
        break;
    }
    return corrupt(r, "data after the footer");
}

/* Where the next 'c' bytes of the current field go (NULL: nowhere, a value that is only
 * checked), and where the whole field will be. A field that arrives whole in one piece is
 * used where it lies. */
static unsigned char *field_dst(checkpoint_reader *r, const unsigned char *p, size_t c)
{
    bool whole = r->have == 0 && c == r->need;
    switch (r->st) {
    case R_KEY:
        r->keyp = whole ? p : r->key;
        return whole ? NULL : r->key + r->have;
    case R_VAL:
        r->valp = whole || !r->fn ? p : r->val;
        return whole || !r->fn ? NULL : r->val + r->have;
    default:
        return r->fix + r->have;
    }
}

static eddy_err plain_feed(checkpoint_reader *r, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    const unsigned char *crc_from = p; /* bytes from here to p are not in r->crc yet */
    while (n > 0 && r->err == EDDY_OK) {
        if (r->st == R_DONE) {
            corrupt(r, "data after the footer");
            break;
        }
        size_t c = r->need - r->have < n ? r->need - r->have : n;
        unsigned char *dst = field_dst(r, p, c);
        if (dst)
            memcpy(dst, p, c);
        if (r->st == R_FOOTER) {
            /* every byte counts in the CRC but the footer's last 4: the CRC itself */
            size_t counted = CHECKPOINT_FOOTER_LEN - 8; /* records and bytes fields */
            size_t part = r->have >= counted ? 0 : (c < counted - r->have ? c : counted - r->have);
            r->crc = crc32c_update(r->crc, crc_from, (size_t)(p - crc_from) + part);
            crc_from = p + c;
        }
        r->have += c;
        r->off += c;
        p += c;
        n -= c;
        if (r->have == r->need) {
            r->have = 0;
            if (field_done(r) != EDDY_OK)
                break;
        }
    }
    /* the rest of the piece in one call: per field, the calls cost more than the hashing */
    if (p > crc_from)
        r->crc = crc32c_update(r->crc, crc_from, (size_t)(p - crc_from));
    /* the piece is the caller's only for this call: a key used in place whose record goes
     * on in the next piece is kept */
    if ((r->st == R_VLEN || r->st == R_VAL) && r->keyp != r->key) {
        memcpy(r->key, r->keyp, r->klen);
        r->keyp = r->key;
    }
    return r->err;
}

/* A whole outer field is in place: the magic, the encrypted header, a chunk's head or the
 * whole sealed chunk. */
static eddy_err outer_done(checkpoint_reader *r)
{
    switch (r->ost) {
    case O_MAGIC:
        if (memcmp(r->ehdr, CHECKPOINT_MAGIC_ENCRYPTED, 8) == 0) {
            r->ost = O_HEADER;
            r->oneed = CHECKPOINT_HEADER_LEN;
            return EDDY_OK;
        }
        if (memcmp(r->ehdr, CHECKPOINT_MAGIC, 8) == 0 && r->ckey)
            return key_mismatch(r);
        r->ost = O_PLAIN; /* a plain file, or damage the inner reader names */
        return plain_feed(r, r->ehdr, 8);
    case O_HEADER:
        if (get_le(r->ehdr + 8, 4) != CHECKPOINT_VERSION)
            return corrupt(r, "unsupported format version");
        if (get_le(r->ehdr + 14, 2) != 0)
            return corrupt(r, "unknown flags");
        if (!r->ckey || memcmp(r->ckey->id, r->ehdr + 16, CKPTKEY_ID_LEN) != 0)
            return key_mismatch(r);
        if (!r->sealed)
            r->sealed = malloc(WRITE_BUF + CKPTKEY_TAG_LEN);
        if (!r->opened)
            r->opened = malloc(WRITE_BUF);
        if (!r->sealed || !r->opened)
            return r->err = EDDY_ERR_NOMEM;
        r->ost = O_CHUNK_HEAD;
        r->oneed = CHUNK_HEAD;
        return EDDY_OK;
    case O_CHUNK_HEAD: {
        r->lenf = (uint32_t)get_le(r->chead, 4);
        uint32_t len = r->lenf & ~CHUNK_LAST;
        if (len == 0 || len > WRITE_BUF)
            return corrupt(r, "bad chunk length");
        r->ost = O_CHUNK;
        r->oneed = len + CKPTKEY_TAG_LEN;
        return EDDY_OK;
    }
    case O_CHUNK: {
        size_t len = r->lenf & ~CHUNK_LAST;
        unsigned char aad[CHUNK_AAD];
        chunk_aad(r->ehdr, r->chunks, r->lenf, aad);
        if (ckptkey_open(r->ckey, aad, sizeof(aad), r->chead + 4, r->sealed, len,
                         r->sealed + len, r->opened) != EDDY_OK)
            return corrupt(r, "chunk fails authentication: changed, cut or out of place");
        r->chunks++;
        r->ost = r->lenf & CHUNK_LAST ? O_END : O_CHUNK_HEAD;
        r->oneed = CHUNK_HEAD;
        return plain_feed(r, r->opened, len);
    }
    default:
        return corrupt(r, "data after the last chunk");
    }
}

/* Where the current outer field is gathered. */
static unsigned char *outer_dst(checkpoint_reader *r)
{
    switch (r->ost) {
    case O_MAGIC:
    case O_HEADER:
        return r->ehdr;
    case O_CHUNK_HEAD:
        return r->chead;
    default:
        return r->sealed;
    }
}

eddy_err checkpoint_reader_feed(checkpoint_reader *r, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0 && r->err == EDDY_OK) {
        if (r->ost == O_PLAIN) {
            r->in_off += n;
            return plain_feed(r, p, n);
        }
        if (r->ost == O_END) {
            corrupt(r, "data after the last chunk");
            break;
        }
        size_t c = r->oneed - r->ohave < n ? r->oneed - r->ohave : n;
        memcpy(outer_dst(r) + r->ohave, p, c);
        r->ohave += c;
        r->in_off += c;
        p += c;
        n -= c;
        if (r->ohave == r->oneed) {
            /* the magic's 8 bytes stay in place: the header goes on after them */
            r->ohave = r->ost == O_MAGIC ? 8 : 0;
            outer_done(r);
        }
    }
    return r->err;
}

eddy_err checkpoint_reader_finish(checkpoint_reader *r, struct checkpoint_info *out)
{
    if (r->err != EDDY_OK)
        return r->err;
    if (r->ost == O_MAGIC || r->ost == O_HEADER)
        return corrupt(r, "shorter than header and footer");
    if (r->ost != O_PLAIN && r->ost != O_END)
        return corrupt(r, "truncated: no last chunk");
    if (r->st != R_DONE)
        return corrupt(r, r->st == R_HEADER ? "shorter than header and footer"
                                            : "truncated: no complete footer");
    if (out) {
        memset(out, 0, sizeof(*out));
        out->partition = r->partition;
        out->version = r->version;
        out->created_ms = r->created_ms;
        out->seq = r->seq;
        out->records = r->records;
        out->bytes = r->in_off;
        out->crc = r->crc;
        out->encrypted = r->ost == O_END;
    }
    return EDDY_OK;
}

/* Read and check the whole file through a reader, with 'fn' as its record callback. */
static eddy_err read_file(const struct ckptkey *key, const char *path, checkpoint_record_fn *fn,
                          void *ud, struct checkpoint_info *out)
{
    FILE *f = fopen(path, "rbe");
    if (!f) {
        if (errno == ENOENT)
            return EDDY_ERR_NOT_FOUND;
        log_error("msg=\"checkpoint: cannot open\" path=%s error=\"%s\"", path, strerror(errno));
        return EDDY_ERR_IO;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        log_error("msg=\"checkpoint: not a regular file\" path=%s", path);
        fclose(f);
        return EDDY_ERR_IO;
    }
    checkpoint_reader *r = checkpoint_reader_new(key, path, fn, ud);
    unsigned char *buf = malloc(WRITE_BUF);
    eddy_err err = r && buf ? EDDY_OK : EDDY_ERR_NOMEM;
    size_t n;
    while (err == EDDY_OK && (n = fread(buf, 1, WRITE_BUF, f)) > 0)
        err = checkpoint_reader_feed(r, buf, n);
    if (err == EDDY_OK && ferror(f)) {
        log_error("msg=\"checkpoint: read failed\" path=%s error=\"%s\"", path, strerror(errno));
        err = EDDY_ERR_IO;
    }
    if (err == EDDY_OK)
        err = checkpoint_reader_finish(r, out);
    if (err == EDDY_OK && out) {
        if (out->bytes != (uint64_t)st.st_size) {
            log_error("msg=\"checkpoint corrupt\" source=%s reason=\"file changed while read\"",
                      path);
            err = EDDY_ERR_CORRUPT;
        }
        snprintf(out->path, sizeof(out->path), "%s", path);
    }
    free(buf);
    checkpoint_reader_free(r);
    fclose(f);
    return err;
}

eddy_err checkpoint_verify(const struct ckptkey *key, const char *path, struct checkpoint_info *out)
{
    return read_file(key, path, NULL, NULL, out);
}

/* ---- loading -------------------------------------------------------------------------- */

static eddy_err load_record(void *ud, const unsigned char *key, size_t klen,
                            const unsigned char *val, size_t vlen)
{
    return store_batch_put(ud, key, klen, val, vlen);
}

eddy_err checkpoint_load(const struct ckptkey *key, store *s, uint32_t p, const char *path,
                         struct checkpoint_info *out)
{
    struct checkpoint_info first, second;
    eddy_err err = checkpoint_verify(key, path, &first);
    if (err != EDDY_OK)
        return err;
    if (first.partition != p) {
        log_error("msg=\"checkpoint of another partition\" path=%s partition=%" PRIu32
                  " want=%" PRIu32,
                  path, first.partition, p);
        return EDDY_ERR_INVALID;
    }
    /* Second pass into the batch: it checks everything again, so a file changed since the
     * verify cannot slip unchecked records into the store. */
    store_batch *b = store_batch_new();
    if (!b)
        return EDDY_ERR_NOMEM;
    err = read_file(key, path, load_record, b, &second);
    if (err == EDDY_OK && (second.partition != p || second.crc != first.crc)) {
        log_error("msg=\"checkpoint changed while loading\" path=%s", path);
        err = EDDY_ERR_CORRUPT;
    }
    uint64_t deleted = 0;
    if (err == EDDY_OK) {
        struct store_key start, end;
        partition_range(p, &start, &end);
        err = store_replace_range(s, &start, &end, b, &deleted);
    }
    store_batch_free(b);
    if (err != EDDY_OK)
        return err;
    log_info("msg=\"checkpoint loaded\" partition=%" PRIu32 " seq=%" PRIu64 " records=%" PRIu64
             " replaced=%" PRIu64 " path=%s",
             p, second.seq, second.records, deleted, path);
    if (out)
        *out = second;
    return EDDY_OK;
}

/* ---- directories ---------------------------------------------------------------------- */

/* Parse "p<5 digits>-<20 digits>.ckp"; 'suffix' lets prune match ".ckp.tmp" too. */
static bool parse_name(const char *name, const char *suffix, uint32_t *p, uint64_t *seq)
{
    size_t sl = strlen(suffix);
    if (strlen(name) != 1 + 5 + 1 + 20 + sl || name[0] != 'p' || name[6] != '-' ||
        strcmp(name + 27, suffix) != 0)
        return false;
    uint64_t v = 0;
    for (int i = 1; i < 6; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *p = (uint32_t)v;
    v = 0;
    for (int i = 7; i < 27; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        uint64_t d = (uint64_t)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *seq = v;
    return true;
}

static int cmp_newest_first(const void *a, const void *b)
{
    const struct checkpoint_file *x = a, *y = b;
    return x->seq < y->seq ? 1 : x->seq > y->seq ? -1 : 0;
}

eddy_err checkpoint_list(const char *dir, uint32_t p, struct checkpoint_file **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return EDDY_OK;
        log_error("msg=\"checkpoint: cannot list\" dir=%s error=\"%s\"", dir, strerror(errno));
        return EDDY_ERR_IO;
    }
    eddy_err err = EDDY_OK;
    struct checkpoint_file *v = NULL;
    size_t len = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t fp;
        uint64_t seq;
        if (!parse_name(de->d_name, ".ckp", &fp, &seq) || fp != p)
            continue;
        if (len == CHECKPOINT_LIST_MAX) {
            log_error("msg=\"checkpoint: too many files\" dir=%s partition=%" PRIu32, dir, p);
            err = EDDY_ERR_TOO_LARGE;
            break;
        }
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct checkpoint_file *nv = realloc(v, ncap * sizeof(*nv));
            if (!nv) {
                err = EDDY_ERR_NOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        v[len].seq = seq;
        if (snprintf(v[len].path, sizeof(v[len].path), "%s/%s", dir, de->d_name) >=
            (int)sizeof(v[len].path)) {
            err = EDDY_ERR_TOO_LARGE;
            break;
        }
        len++;
    }
    closedir(d);
    if (err != EDDY_OK) {
        free(v);
        return err;
    }
    if (len > 0)
        qsort(v, len, sizeof(*v), cmp_newest_first);
    *out = v;
    *n = len;
    return EDDY_OK;
}

/* Remove leftovers of interrupted writes of partition 'p'. */
static void remove_tmp_files(const char *dir, uint32_t p)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint32_t fp;
        uint64_t seq;
        char path[CHECKPOINT_PATH_MAX];
        if (!parse_name(de->d_name, ".ckp.tmp", &fp, &seq) || fp != p)
            continue;
        if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) < (int)sizeof(path) &&
            unlink(path) == 0)
            log_info("msg=\"checkpoint: removed unfinished file\" path=%s", path);
    }
    closedir(d);
}

eddy_err checkpoint_prune(const struct ckptkey *key, const char *dir, uint32_t p, int keep,
                          size_t *removed)
{
    return checkpoint_prune_trusting(key, dir, p, keep, NULL, removed);
}

eddy_err checkpoint_prune_trusting(const struct ckptkey *key, const char *dir, uint32_t p, int keep,
                                   const char *trusted,
                                   size_t *removed)
{
    if (removed)
        *removed = 0;
    if (keep < 0)
        return EDDY_ERR_INVALID;
    struct checkpoint_file *v = NULL;
    size_t n = 0;
    eddy_err err = checkpoint_list(dir, p, &v, &n);
    if (err != EDDY_OK)
        return err;
    remove_tmp_files(dir, p);

    /* Find the newest valid file; if it is older than the kept ones, keep it as well. */
    size_t spare = n; /* index of an extra file to keep, n for none */
    if (keep > 0) {
        for (size_t i = 0; i < n; i++) {
            eddy_err e = trusted && strcmp(v[i].path, trusted) == 0
                             ? EDDY_OK
                             : checkpoint_verify(key, v[i].path, NULL);
            if (e == EDDY_OK) {
                if (i >= (size_t)keep)
                    spare = i;
                break;
            }
            if (e != EDDY_ERR_CORRUPT && e != EDDY_ERR_NOT_FOUND) {
                /* cannot tell which one is good: delete nothing */
                free(v);
                return e;
            }
        }
    }
    size_t gone = 0;
    for (size_t i = (size_t)keep; i < n; i++) {
        if (i == spare)
            continue;
        if (unlink(v[i].path) != 0 && errno != ENOENT) {
            log_error("msg=\"checkpoint: cannot delete\" path=%s error=\"%s\"", v[i].path,
                      strerror(errno));
            err = EDDY_ERR_IO;
            continue;
        }
        gone++;
    }
    free(v);
    if (gone > 0 && err == EDDY_OK)
        err = fsync_dir(dir[0] ? dir : ".");
    if (removed)
        *removed = gone;
    return err;
}

eddy_err checkpoint_check_dir(const struct ckptkey *key, const char *dir, char *why,
                              size_t whylen)
{
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return EDDY_OK;
        snprintf(why, whylen, "cannot list %s: %s", dir, strerror(errno));
        return EDDY_ERR_IO;
    }
    eddy_err err = EDDY_OK;
    struct dirent *de;
    while (err == EDDY_OK && (de = readdir(d)) != NULL) {
        uint32_t p;
        uint64_t seq;
        char path[CHECKPOINT_PATH_MAX], what[256];
        if (!parse_name(de->d_name, ".ckp", &p, &seq) ||
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= (int)sizeof(path))
            continue;
        unsigned char h[CHECKPOINT_HEADER_LEN];
        ssize_t n = -1;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            n = pread(fd, h, sizeof(h), 0);
            close(fd);
        }
        if (n < 0)
            continue; /* gone meanwhile, or unreadable: the reader reports it when used */
        header_key_check(key, h, (size_t)n, what, sizeof(what));
        if (what[0]) {
            snprintf(why, whylen, "checkpoint %s %s", path, what);
            err = EDDY_ERR_KEY;
        }
    }
    closedir(d);
    return err;
}

eddy_err checkpoint_latest_valid(const struct ckptkey *key, const char *dir, uint32_t p,
                                 struct checkpoint_info *out)
{
    struct checkpoint_file *v = NULL;
    size_t n = 0;
    eddy_err err = checkpoint_list(dir, p, &v, &n);
    if (err != EDDY_OK)
        return err;
    err = EDDY_ERR_NOT_FOUND;
    struct checkpoint_info info;
    for (size_t i = 0; i < n; i++) {
        eddy_err e = checkpoint_verify(key, v[i].path, &info);
        if (e == EDDY_OK && info.partition != p) {
            log_warn("msg=\"checkpoint: file claims another partition, skipped\" path=%s",
                     v[i].path);
            continue;
        }
        if (e == EDDY_OK) {
            if (out)
                *out = info;
            err = EDDY_OK;
            break;
        }
        if (e == EDDY_ERR_CORRUPT || e == EDDY_ERR_NOT_FOUND) {
            log_warn("msg=\"checkpoint skipped, trying an older one\" path=%s error=\"%s\"",
                     v[i].path, eddy_strerror(e));
            continue;
        }
        err = e;
        break;
    }
    free(v);
    return err;
}
