/* Checkpoint files of one partition (docs/design.md §7): a consistent copy of the partition's
 * whole key range, taken from one LevelDB snapshot while the writer keeps committing,
 * checked end to end with CRC-32C, and loadable into another store in one atomic write.
 *
 * File format, version 1. Integers are little-endian; keys and values are raw bytes.
 *
 *   header (32 bytes)
 *     0  magic       8 bytes "EDDYCKP1"
 *     8  version     u32     1
 *    12  partition   u16
 *    14  flags       u16     0 (a version-1 reader rejects any other value)
 *    16  created_ms  i64     wall clock when written (informational only)
 *    24  seq         u64     the partition's META next_seq in the snapshot: the log
 *                            records below seq are reflected in this state, so a copy
 *                            catches up by tailing the owner's log from seq
 *   records, in strictly ascending key order, zero or more of
 *        klen        u32     3 .. STORE_KEY_MAX (1024); the key starts with the
 *                            partition as big-endian u16 (store.h key layout)
 *        key         klen bytes
 *        vlen        u32     0 .. CHECKPOINT_VALUE_MAX
 *        value       vlen bytes
 *   footer (24 bytes)
 *        end         u32     0 (no key is empty: marks the end of the records)
 *        records     u64     number of records
 *        bytes       u64     length of the whole file, footer included
 *        crc         u32     CRC-32C (Castagnoli) of every byte before this field
 *
 * Encrypted files (a node with --checkpoint-key-file; docs/security.md): the bytes above,
 * cut into chunks of up to 256 KiB, each sealed with AES-256-GCM under the cluster's key
 * (ckptkey.h), so files larger than memory stream through in both directions:
 *   header (32 bytes, in the clear; authenticated with every chunk)
 *     0  magic       8 bytes "EDDYCKE1"
 *     8  version     u32     1
 *    12  partition   u16
 *    14  flags       u16     0
 *    16  key id      8 bytes the first 8 bytes of SHA-256 of the key
 *    24  file id     8 random bytes: a chunk cannot be moved into another file
 *   chunks, one or more
 *        len         u32     bytes of the plain file in it, 1 .. 256 KiB; bit 31 set on
 *                            the last chunk, and nothing may follow that one
 *        nonce       12 bytes, random for each chunk
 *        data        len bytes, encrypted
 *        tag         16 bytes
 *   The associated data of chunk i is the header, i (u64) and its len field: a chunk
 *   changed, dropped, reordered, cut short or taken from another file fails its tag.
 * A reader with a key reads only encrypted files of that key and a reader without one only
 * plain files: anything else is EDDY_ERR_KEY, logged as "checkpoint encrypted with key
 * <id>, this node has <id2>", never an empty or partial load. 'key' arguments below are
 * NULL for plain files, else borrowed for the call.
 *
 * A file is only ever published whole: it is written to PATH.tmp, fsynced, renamed to
 * PATH and the directory fsynced. Files in a checkpoint directory are named
 * p<partition:05>-<seq:020>.ckp, so the name sorts and identifies them.
 *
 * Threads: any thread (never a gRPC completion-queue thread: these block on disk). Writing,
 * listing and pruning one partition's checkpoints belong to one thread at a time; reading
 * (verify, latest_valid) may run anywhere. */
#ifndef EDDY_CHECKPOINT_H
#define EDDY_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "node/state/ckptkey.h"
#include "node/state/store.h"

#define CHECKPOINT_MAGIC "EDDYCKP1"
#define CHECKPOINT_MAGIC_ENCRYPTED "EDDYCKE1"
#define CHECKPOINT_VERSION 1u
#define CHECKPOINT_HEADER_LEN 32u
#define CHECKPOINT_FOOTER_LEN 24u
#define CHECKPOINT_VALUE_MAX (64u << 20) /* a larger value is a corrupt length field */
#define CHECKPOINT_PATH_MAX 4096
#define CHECKPOINT_LIST_MAX 100000       /* files of one partition in a directory */

/* What a checkpoint file holds, as written or as verified. */
struct checkpoint_info {
    uint32_t partition;
    uint32_t version;
    uint64_t seq;         /* META next_seq of the partition in the snapshot (0: no META) */
    int64_t created_ms;   /* informational */
    uint64_t records;     /* key/value records */
    uint64_t bytes;       /* file length (as stored: encrypted, if it is) */
    uint32_t crc;         /* the footer's CRC-32C (of the plain bytes) */
    bool encrypted;
    char path[CHECKPOINT_PATH_MAX];
};

/* Write the canonical name of partition 'p''s checkpoint at 'seq' in 'dir' into 'buf'
 * ("DIR/p00042-00000000000000001234.ckp"). EDDY_ERR_TOO_LARGE if it does not fit. */
eddy_err checkpoint_path(char *buf, size_t n, const char *dir, uint32_t p, uint64_t seq);

/* Copy partition 'p' of 's', as of one snapshot, into the checkpoint file 'path' (replaced
 * atomically if it exists). 'out' (may be NULL) receives what was written. On failure
 * nothing is published and PATH.tmp is removed. */
eddy_err checkpoint_write(const struct ckptkey *key, store *s, uint32_t p, const char *path,
                          struct checkpoint_info *out);

/* checkpoint_write to the canonical name in 'dir' (created if missing), which depends on
 * the snapshot's seq; out->path tells where the file went. */
eddy_err checkpoint_write_dir(const struct ckptkey *key, store *s, uint32_t p, const char *dir,
                              struct checkpoint_info *out);

/* checkpoint_write_dir that gives up with EDDY_ERR_TIMEOUT, publishing nothing, once
 * clock_mono_ms() reaches 'deadline_ms' (checked every 1024 records and before the file is
 * renamed into place; 0: no deadline). */
eddy_err checkpoint_write_dir_until(const struct ckptkey *key, store *s, uint32_t p,
                                    const char *dir, int64_t deadline_ms,
                                    struct checkpoint_info *out);

/* Receives the bytes of a streamed checkpoint in order, in pieces of up to 256 KiB (and a
 * chunk's 32 bytes, encrypted; borrowed for the call). A non-OK result stops the stream with that error. */
typedef eddy_err checkpoint_sink_fn(void *ud, const void *buf, size_t n);

/* checkpoint_write into 'sink' instead of a file (a move's source streaming a fresh
 * checkpoint: no file, no fsync). 'out' (may be NULL; path empty) is what was sent. */
eddy_err checkpoint_stream(const struct ckptkey *key, store *s, uint32_t p,
                           checkpoint_sink_fn *sink, void *ud, struct checkpoint_info *out);

/* ---- an incremental reader: a checkpoint's bytes in any pieces, its records out, with
 * every check checkpoint_verify makes (a move's target loading a stream as it arrives).
 * 'fn' (may be NULL: check only) gets each record, key and value borrowed for the call;
 * its non-OK result stops the reader with it. 'what' names the source in log lines. */
typedef eddy_err checkpoint_record_fn(void *ud, const unsigned char *key, size_t klen,
                                      const unsigned char *val, size_t vlen);
typedef struct checkpoint_reader checkpoint_reader;
checkpoint_reader *checkpoint_reader_new(const struct ckptkey *key, const char *what,
                                         checkpoint_record_fn *fn, void *ud);
/* Take the next 'n' bytes. EDDY_ERR_CORRUPT (logged, with the offset) at the first
 * damage, EDDY_ERR_KEY (logged) once the header shows another key or none; after an
 * error every call returns it again. */
eddy_err checkpoint_reader_feed(checkpoint_reader *r, const void *buf, size_t n);
/* The end of the bytes: EDDY_ERR_CORRUPT unless a whole, valid checkpoint was fed. 'out'
 * (may be NULL) is filled on success (path empty). */
eddy_err checkpoint_reader_finish(checkpoint_reader *r, struct checkpoint_info *out);
void checkpoint_reader_free(checkpoint_reader *r);

/* Read the whole file and check it: magic, version, flags, lengths, key order and
 * partition, record count, file length and CRC (and each chunk's tag, encrypted).
 * EDDY_ERR_CORRUPT (with one log line saying where and why) for any damage, truncation
 * included; EDDY_ERR_KEY for a key mismatch (above); EDDY_ERR_NOT_FOUND if there is no
 * such file; EDDY_ERR_IO if it cannot be read. Streams the file: memory use does not
 * depend on its contents. 'out' (may be NULL) is filled on success. */
eddy_err checkpoint_verify(const struct ckptkey *key, const char *path, struct checkpoint_info *out);

/* Make partition 'p' of 's' exactly the contents of checkpoint 'path': verify the file,
 * then, in one synced LevelDB write, delete every key of the partition and put the
 * file's records. Other partitions are untouched. EDDY_ERR_INVALID (and no change) if the
 * file belongs to another partition. The caller makes sure nothing writes partition 'p'
 * meanwhile (it is not being served: a move's target, or a restart). Holds the whole
 * partition in memory for the write. 'out' (may be NULL) is filled on success. */
eddy_err checkpoint_load(const struct ckptkey *key, store *s, uint32_t p, const char *path,
                         struct checkpoint_info *out);

/* One checkpoint file found in a directory. */
struct checkpoint_file {
    uint64_t seq;
    char path[CHECKPOINT_PATH_MAX];
};

/* Partition 'p''s checkpoint files in 'dir' (by name; not verified), newest (highest seq)
 * first. Caller owns *out (NULL when *n == 0); free with free(). A missing directory
 * holds no checkpoints (EDDY_OK, *n == 0). EDDY_ERR_TOO_LARGE over CHECKPOINT_LIST_MAX. */
eddy_err checkpoint_list(const char *dir, uint32_t p, struct checkpoint_file **out, size_t *n);

/* Delete all but the newest 'keep' checkpoint files of partition 'p' in 'dir', and any
 * leftover p<partition>-*.ckp.tmp of an interrupted write. Never leaves the partition
 * without a valid checkpoint it had: if none of the kept files verifies, the newest older
 * one that does is kept too. *removed (may be NULL) receives the number of .ckp files
 * deleted. */
eddy_err checkpoint_prune(const struct ckptkey *key, const char *dir, uint32_t p, int keep,
                          size_t *removed);

/* checkpoint_prune that takes the file 'trusted' (a path as checkpoint_list gives it, or
 * NULL) as valid without reading it again: the checkpoint just written and fsynced, whose
 * CRC was computed as it was written. */
eddy_err checkpoint_prune_trusting(const struct ckptkey *key, const char *dir, uint32_t p, int keep,
                                   const char *trusted, size_t *removed);

/* The newest checkpoint of partition 'p' in 'dir' that verifies, skipping corrupt ones
 * with a warning (the previous checkpoint plus a longer log replay then serve). 'out'
 * receives it. EDDY_ERR_NOT_FOUND if there is none; EDDY_ERR_KEY, without looking
 * further, at the first file of another key (or the other side of encrypted/plain). */
eddy_err checkpoint_latest_valid(const struct ckptkey *key, const char *dir, uint32_t p,
                                 struct checkpoint_info *out);

/* Check that 'key' reads every checkpoint file in 'dir' (a missing directory holds none),
 * from their headers alone: a node started with the wrong key (or with one, or without,
 * against the files) is refused at start rather than at its first restore. EDDY_ERR_KEY
 * with the first file that is not, and why, in 'why'; EDDY_ERR_IO if 'dir' cannot be
 * listed. */
eddy_err checkpoint_check_dir(const struct ckptkey *key, const char *dir, char *why,
                              size_t whylen);

#endif
