/*
 * cm_auth.c - see cm_auth.h. The table is swapped under a read-write lock:
 * a reload parses into a new table without holding it, then takes it only to
 * exchange one pointer.
 */
#include "cm_auth.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCOPES_MAX 16
#define FILE_MAX (1024 * 1024)
#define LINE_MAX_LEN 1024

typedef struct {
    unsigned char digest[32];
    char name[CM_AUTH_NAME_MAX];
    char scopes[SCOPES_MAX][CM_AUTH_SCOPE_MAX];
    size_t nscopes;
} entry;

typedef struct {
    entry *e;
    size_t n;
} table;

struct cm_auth {
    pthread_rwlock_t lock;
    table *t;
};

static void table_free(table *t)
{
    if (!t)
        return;
    /* Digests only, but wipe them anyway: nothing of the file lingers. */
    if (t->e)
        OPENSSL_cleanse(t->e, t->n * sizeof(*t->e));
    free(t->e);
    free(t);
}

int cm_auth_new(cm_auth **ret)
{
    cm_auth *a = calloc(1, sizeof(*a));

    if (!a)
        return -ENOMEM;
    a->t = calloc(1, sizeof(*a->t));
    if (!a->t || pthread_rwlock_init(&a->lock, NULL) != 0) {
        free(a->t);
        free(a);
        return -ENOMEM;
    }
    *ret = a;
    return 0;
}

void cm_auth_free(cm_auth *a)
{
    if (!a)
        return;
    table_free(a->t);
    pthread_rwlock_destroy(&a->lock);
    free(a);
}

static bool word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

bool cm_auth_scope_valid(const char *s, size_t len)
{
    const char *colon = memchr(s, ':', len);

    if (len == 0 || len >= CM_AUTH_SCOPE_MAX || !colon || colon == s || colon == s + len - 1)
        return false;
    for (size_t i = 0; i < len; i++)
        if (s + i != colon && !word_char(s[i]))
            return false;
    return true;
}

bool cm_auth_name_valid(const char *s, size_t len)
{
    if (len == 0 || len >= CM_AUTH_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int sha256(const char *data, size_t len, unsigned char out[32])
{
    unsigned int outlen = 0;

    if (EVP_Digest(data, len, out, &outlen, EVP_sha256(), NULL) != 1 || outlen != 32)
        return -EIO;
    return 0;
}

int cm_auth_hash_hex(const char *token, size_t len, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[32];

    if (sha256(token, len, d) < 0)
        return -EIO;
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
    return 0;
}

int cm_auth_token_new(char out[CM_AUTH_TOKEN_LEN])
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[33] = {0}; /* 32 random bytes, one zero byte of padding */
    size_t got = 0, o = 3;

    while (got < 32) {
        ssize_t r = getrandom(raw + got, 32 - got, 0);
        if (r < 0 && errno != EINTR)
            return -errno;
        if (r > 0)
            got += (size_t)r;
    }
    memcpy(out, "ot_", 3);
    /* 32 bytes = 10 groups of 3 and 2 left: 40 + 3 characters, no padding. */
    for (size_t i = 0; i < 33; i += 3) {
        unsigned v =
            (unsigned)raw[i] << 16 | (unsigned)raw[i + 1] << 8 | (i + 2 < 33 ? raw[i + 2] : 0u);
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = b64[(v >> 6) & 63];
        if (i + 2 < 32)
            out[o++] = b64[v & 63];
    }
    out[o] = '\0';
    OPENSSL_cleanse(raw, sizeof(raw));
    return o == CM_AUTH_TOKEN_LEN - 1 ? 0 : -EIO;
}

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return r;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Next whitespace-separated field of line [*p, end). */
static bool field(const char **p, const char *end, const char **f, size_t *flen)
{
    const char *s = *p;

    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    if (s == end)
        return false;
    *f = s;
    while (s < end && *s != ' ' && *s != '\t')
        s++;
    *flen = (size_t)(s - *f);
    *p = s;
    return true;
}

static int parse_line(const char *path, int lineno, const char *s, const char *end, entry *e,
                      char *err, size_t errlen)
{
    const char *f, *p = s;
    size_t flen;

    if (!field(&p, end, &f, &flen) || flen != 64)
        return fail(err, errlen, -EINVAL,
                    "%s:%d: first field must be the 64 hex digits of the token's SHA-256 (see "
                    "orderctl token new)",
                    path, lineno);
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(f[2 * i]), lo = hexval(f[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return fail(err, errlen, -EINVAL, "%s:%d: first field is not hexadecimal", path,
                        lineno);
        e->digest[i] = (unsigned char)(hi << 4 | lo);
    }
    if (!field(&p, end, &f, &flen))
        return fail(err, errlen, -EINVAL, "%s:%d: missing token name and scopes", path, lineno);
    if (!cm_auth_name_valid(f, flen))
        return fail(err, errlen, -EINVAL, "%s:%d: token name must be 1 to %d of A-Z a-z 0-9 . _ -",
                    path, lineno, CM_AUTH_NAME_MAX - 1);
    memcpy(e->name, f, flen);
    e->name[flen] = '\0';
    if (!field(&p, end, &f, &flen))
        return fail(err, errlen, -EINVAL, "%s:%d: missing scopes (e.g. orders:write,orders:read)",
                    path, lineno);
    for (const char *sc = f, *fend = f + flen; sc <= fend;) {
        const char *comma = memchr(sc, ',', (size_t)(fend - sc));
        size_t slen = (size_t)((comma ? comma : fend) - sc);
        if (!cm_auth_scope_valid(sc, slen))
            return fail(err, errlen, -EINVAL,
                        "%s:%d: invalid scope \"%.*s\" (like orders:write: lowercase word, "
                        "colon, word)",
                        path, lineno, (int)(slen < 64 ? slen : 64), sc);
        if (e->nscopes == SCOPES_MAX)
            return fail(err, errlen, -EINVAL, "%s:%d: more than %d scopes", path, lineno,
                        SCOPES_MAX);
        memcpy(e->scopes[e->nscopes], sc, slen);
        e->scopes[e->nscopes++][slen] = '\0';
        if (!comma)
            break;
        sc = comma + 1;
    }
    if (field(&p, end, &f, &flen))
        return fail(err, errlen, -EINVAL,
                    "%s:%d: unexpected fourth field (scopes are separated by commas, no spaces)",
                    path, lineno);
    return 0;
}

static int parse(const char *path, const char *text, size_t textlen, table **ret, char *err,
                 size_t errlen)
{
    table *t = calloc(1, sizeof(*t));
    size_t cap = 0;
    int lineno = 0, r = 0;

    if (!t)
        return fail(err, errlen, -ENOMEM, "%s: out of memory", path);
    for (const char *s = text, *tend = text + textlen; s < tend && r == 0;) {
        const char *nl = memchr(s, '\n', (size_t)(tend - s));
        const char *end = nl ? nl : tend, *p = s;
        lineno++;
        if (end > s && end[-1] == '\r')
            end--;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (memchr(s, '\0', (size_t)(end - s))) {
            r = fail(err, errlen, -EINVAL, "%s:%d: NUL byte", path, lineno);
        } else if (end - s > LINE_MAX_LEN) {
            r = fail(err, errlen, -EINVAL, "%s:%d: line longer than %d bytes", path, lineno,
                     LINE_MAX_LEN);
        } else if (p < end && *p != '#') {
            if (t->n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                entry *ne = realloc(t->e, ncap * sizeof(*ne));
                if (!ne) {
                    r = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
                    break;
                }
                t->e = ne;
                cap = ncap;
            }
            entry *e = &t->e[t->n];
            memset(e, 0, sizeof(*e));
            r = parse_line(path, lineno, p, end, e, err, errlen);
            for (size_t i = 0; r == 0 && i < t->n; i++) {
                if (memcmp(t->e[i].digest, e->digest, 32) == 0)
                    r = fail(err, errlen, -EINVAL, "%s:%d: the same token hash as token \"%s\"",
                             path, lineno, t->e[i].name);
                else if (strcmp(t->e[i].name, e->name) == 0)
                    r = fail(err, errlen, -EINVAL,
                             "%s:%d: token name \"%s\" used twice (audit lines name tokens)", path,
                             lineno, e->name);
            }
            if (r == 0)
                t->n++;
        }
        s = nl ? nl + 1 : tend;
    }
    if (r < 0) {
        table_free(t);
        return r;
    }
    *ret = t;
    return 0;
}

static void install(cm_auth *a, table *t)
{
    table *old;

    pthread_rwlock_wrlock(&a->lock);
    old = a->t;
    a->t = t;
    pthread_rwlock_unlock(&a->lock);
    table_free(old);
}

int cm_auth_load_text(cm_auth *a, const char *path, const char *text, size_t *count, char *err,
                      size_t errlen)
{
    table *t = NULL;
    int r = parse(path, text, strlen(text), &t, err, errlen);

    if (r < 0)
        return r;
    *count = t->n;
    install(a, t);
    return 0;
}

int cm_auth_load(cm_auth *a, const char *path, size_t *count, char *err, size_t errlen)
{
    struct stat sb;
    char *buf = NULL;
    size_t len = 0;
    table *t = NULL;
    int fd, r = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
    if (fstat(fd, &sb) < 0) {
        r = fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        r = fail(err, errlen, -EINVAL, "%s: not a regular file", path);
    } else if (sb.st_mode & (S_IWGRP | S_IWOTH)) {
        r = fail(err, errlen, -EPERM,
                 "%s: writable by group or others (mode %04o): whoever can write it can grant "
                 "themselves any scope; chmod go-w it",
                 path, (unsigned)(sb.st_mode & 07777));
    } else if (sb.st_size > FILE_MAX) {
        r = fail(err, errlen, -EFBIG, "%s: larger than %d bytes", path, FILE_MAX);
    } else if (!(buf = malloc((size_t)sb.st_size + 1))) {
        r = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
    }
    while (r == 0) {
        ssize_t n = read(fd, buf + len, (size_t)sb.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            r = fail(err, errlen, -errno, "%s: %s", path, strerror(errno));
        else if (n == 0 || (len += (size_t)n) == (size_t)sb.st_size)
            break;
    }
    close(fd);
    if (r == 0)
        r = parse(path, buf, len, &t, err, errlen);
    free(buf);
    if (r < 0)
        return r;
    *count = t->n;
    install(a, t);
    return 0;
}

cm_auth_result cm_auth_check(cm_auth *a, const char *token, size_t len, const char *scope,
                             char *name, size_t namelen)
{
    unsigned char d[32];
    const entry *hit = NULL;
    cm_auth_result res = CM_AUTH_UNKNOWN;

    if (!token || len == 0 || sha256(token, len, d) < 0)
        return CM_AUTH_UNKNOWN;
    pthread_rwlock_rdlock(&a->lock);
    /* Every entry is compared, each in constant time: no early exit. */
    for (size_t i = 0; i < a->t->n; i++)
        if (CRYPTO_memcmp(a->t->e[i].digest, d, 32) == 0)
            hit = &a->t->e[i];
    if (hit) {
        res = scope ? CM_AUTH_FORBIDDEN : CM_AUTH_OK;
        for (size_t i = 0; scope && i < hit->nscopes; i++)
            if (strcmp(hit->scopes[i], scope) == 0)
                res = CM_AUTH_OK;
        if (name && namelen)
            snprintf(name, namelen, "%s", hit->name);
    }
    pthread_rwlock_unlock(&a->lock);
    return res;
}

static bool b64token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

bool cm_auth_parse_bearer(const char *value, const char **token, size_t *len)
{
    const char *s;
    size_t n = 0;

    if (!value || strncasecmp(value, "Bearer ", 7) != 0)
        return false;
    s = value + 7;
    while (*s == ' ')
        s++;
    while (b64token_char(s[n]))
        n++;
    if (n == 0)
        return false;
    /* b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
    size_t m = n;
    while (s[m] == '=')
        m++;
    size_t tail = m;
    while (s[tail] == ' ' || s[tail] == '\t')
        tail++;
    if (s[tail] != '\0' || m > 512)
        return false;
    *token = s;
    *len = m;
    return true;
}
