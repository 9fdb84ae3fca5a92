/* The checkpoint key (--checkpoint-key-file, docs/security.md): loading it, naming it by a
 * short id that does not reveal it, and sealing and opening one chunk of a checkpoint with
 * it under AES-256-GCM (OpenSSL EVP). The chunked file format is checkpoint.h's.
 *
 * Threads: a loaded key is read-only; any thread may seal and open with it at once. */
#ifndef EDDY_CKPTKEY_H
#define EDDY_CKPTKEY_H

#include <stddef.h>

#include "common/err.h"

#define CKPTKEY_LEN 32      /* AES-256 */
#define CKPTKEY_ID_LEN 8    /* the first bytes of SHA-256 of the key */
#define CKPTKEY_NONCE_LEN 12
#define CKPTKEY_TAG_LEN 16
#define CKPTKEY_ID_TEXT 17  /* 16 hex digits and the NUL */

/* One key. Embedded by its owner (the node: --checkpoint-key-file); borrowed by the engine
 * and every checkpoint call for the owner's life; ckptkey_release wipes it. */
struct ckptkey {
    unsigned char key[CKPTKEY_LEN];
    unsigned char id[CKPTKEY_ID_LEN];
};

/* Read the key file 'path': exactly 32 raw bytes, or 64 hex digits (a final newline
 * allowed). Anything else is EDDY_ERR_INVALID, with the reason in 'why'; an unreadable
 * file EDDY_ERR_IO (or EDDY_ERR_NOT_FOUND). */
eddy_err ckptkey_load(const char *path, struct ckptkey *out, char *why, size_t whylen);

/* The same rule on 'n' bytes already read. */
eddy_err ckptkey_parse(const unsigned char *b, size_t n, struct ckptkey *out, char *why,
                       size_t whylen);

/* 'id' as 16 lower-case hex digits into 'out'. */
void ckptkey_id_text(const unsigned char id[CKPTKEY_ID_LEN], char out[CKPTKEY_ID_TEXT]);

/* Encrypt 'n' bytes of 'in' into 'out' (n bytes; may not overlap 'in') under a fresh random
 * nonce (written to 'nonce'), authenticating 'aad' too; the tag goes to 'tag'.
 * EDDY_ERR_NOMEM/EDDY_ERR_IO if OpenSSL fails. */
eddy_err ckptkey_seal(const struct ckptkey *k, const unsigned char *aad, size_t aadlen,
                      const unsigned char *in, size_t n, unsigned char nonce[CKPTKEY_NONCE_LEN],
                      unsigned char *out, unsigned char tag[CKPTKEY_TAG_LEN]);

/* Decrypt and check what ckptkey_seal made. EDDY_ERR_CORRUPT if the tag does not match
 * (the bytes, the nonce, the tag or 'aad' were changed, or another key sealed them): 'out'
 * must then not be used. */
eddy_err ckptkey_open(const struct ckptkey *k, const unsigned char *aad, size_t aadlen,
                      const unsigned char nonce[CKPTKEY_NONCE_LEN], const unsigned char *in,
                      size_t n, const unsigned char tag[CKPTKEY_TAG_LEN], unsigned char *out);

/* Wipe the key. Accepts NULL. */
void ckptkey_release(struct ckptkey *k);

#endif
