/* The checkpoint key and AES-256-GCM over one chunk (ckptkey.h). One EVP context per chunk:
 * a chunk is up to 256 KiB, so its setup is lost in the cipher's own time. */
#include "node/state/ckptkey.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool parse_hex(const unsigned char *b, unsigned char key[CKPTKEY_LEN])
{
    for (size_t i = 0; i < CKPTKEY_LEN; i++) {
        int hi = hex_digit(b[2 * i]), lo = hex_digit(b[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        key[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

eddy_err ckptkey_parse(const unsigned char *b, size_t n, struct ckptkey *out, char *why,
                       size_t whylen)
{
    size_t hexlen = n;
    if (hexlen > 0 && b[hexlen - 1] == '\n')
        hexlen--;
    if (hexlen > 0 && b[hexlen - 1] == '\r')
        hexlen--;
    if (hexlen == 2 * CKPTKEY_LEN && parse_hex(b, out->key)) {
        /* 64 hex digits */
    } else if (n == CKPTKEY_LEN) {
        memcpy(out->key, b, CKPTKEY_LEN);
    } else {
        snprintf(why, whylen, "%zu bytes: want exactly 32 raw bytes or 64 hex digits", n);
        return EDDY_ERR_INVALID;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(out->key, CKPTKEY_LEN, md, &mdlen, EVP_sha256(), NULL) != 1 ||
        mdlen < CKPTKEY_ID_LEN) {
        OPENSSL_cleanse(out->key, CKPTKEY_LEN);
        snprintf(why, whylen, "SHA-256 failed");
        return EDDY_ERR_NOMEM;
    }
    memcpy(out->id, md, CKPTKEY_ID_LEN);
    return EDDY_OK;
}

eddy_err ckptkey_load(const char *path, struct ckptkey *out, char *why, size_t whylen)
{
    /* one byte more than the longest valid file (64 hex digits and CR LF) tells "too long" */
    unsigned char b[2 * CKPTKEY_LEN + 3];
    size_t n = 0;
    eddy_err err = EDDY_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "%s", strerror(errno));
        return errno == ENOENT ? EDDY_ERR_NOT_FOUND : EDDY_ERR_IO;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0)
        log_warn("msg=\"checkpoint key file is readable by group or others\" path=%s mode=%o",
                 path, (unsigned)(st.st_mode & 0777));
    while (n < sizeof(b)) {
        ssize_t r = read(fd, b + n, sizeof(b) - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whylen, "%s", strerror(errno));
            err = EDDY_ERR_IO;
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n == sizeof(b)) {
        snprintf(why, whylen, "too long: want exactly 32 raw bytes or 64 hex digits");
        err = EDDY_ERR_INVALID;
        goto out;
    }
    err = ckptkey_parse(b, n, out, why, whylen);

out:
    OPENSSL_cleanse(b, sizeof(b));
    close(fd);
    return err;
}

void ckptkey_id_text(const unsigned char id[CKPTKEY_ID_LEN], char out[CKPTKEY_ID_TEXT])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < CKPTKEY_ID_LEN; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
    out[2 * CKPTKEY_ID_LEN] = '\0';
}

/* EVP takes int lengths: a chunk is far below INT_MAX (checkpoint.h), checked anyway. */
static bool fits_int(size_t a, size_t b)
{
    return a <= INT_MAX && b <= INT_MAX;
}

/* One chunk through AES-256-GCM: encrypt ('enc' 1: the tag out to 'tag') or decrypt and
 * check ('enc' 0: the tag in 'tag'; EDDY_ERR_CORRUPT if it does not match). */
static eddy_err gcm(const struct ckptkey *k, int enc, const unsigned char *aad, size_t aadlen,
                    const unsigned char nonce[CKPTKEY_NONCE_LEN], const unsigned char *in,
                    size_t n, unsigned char *out, unsigned char tag[CKPTKEY_TAG_LEN])
{
    if (!fits_int(aadlen, n))
        return EDDY_ERR_TOO_LARGE;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    if (!c)
        return EDDY_ERR_NOMEM;
    eddy_err err = EDDY_ERR_IO;
    int len = 0;
    unsigned char none[16]; /* GCM's final step writes nothing; 'out' may be NULL when n == 0 */
    if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, CKPTKEY_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(c, NULL, NULL, k->key, nonce, enc) != 1 ||
        (!enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, CKPTKEY_TAG_LEN, tag) != 1) ||
        EVP_CipherUpdate(c, NULL, &len, aad, (int)aadlen) != 1 ||
        (n > 0 && EVP_CipherUpdate(c, out, &len, in, (int)n) != 1))
        goto out;
    /* decrypting, the tag is checked here: only a match releases the plaintext */
    if (EVP_CipherFinal_ex(c, n > 0 ? out + len : none, &len) != 1) {
        err = enc ? EDDY_ERR_IO : EDDY_ERR_CORRUPT;
        goto out;
    }
    if (enc && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, CKPTKEY_TAG_LEN, tag) != 1)
        goto out;
    err = EDDY_OK;

out:
    EVP_CIPHER_CTX_free(c);
    return err;
}

eddy_err ckptkey_seal(const struct ckptkey *k, const unsigned char *aad, size_t aadlen,
                      const unsigned char *in, size_t n, unsigned char nonce[CKPTKEY_NONCE_LEN],
                      unsigned char *out, unsigned char tag[CKPTKEY_TAG_LEN])
{
    if (RAND_bytes(nonce, CKPTKEY_NONCE_LEN) != 1)
        return EDDY_ERR_IO;
    return gcm(k, 1, aad, aadlen, nonce, in, n, out, tag);
}

eddy_err ckptkey_open(const struct ckptkey *k, const unsigned char *aad, size_t aadlen,
                      const unsigned char nonce[CKPTKEY_NONCE_LEN], const unsigned char *in,
                      size_t n, const unsigned char tag[CKPTKEY_TAG_LEN], unsigned char *out)
{
    unsigned char t[CKPTKEY_TAG_LEN];
    memcpy(t, tag, sizeof(t)); /* EVP's ctrl takes a non-const pointer */
    return gcm(k, 0, aad, aadlen, nonce, in, n, out, t);
}

void ckptkey_release(struct ckptkey *k)
{
    if (k)
        OPENSSL_cleanse(k, sizeof(*k));
}
