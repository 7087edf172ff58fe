/*
 * ev_event.c - see ev_event.h.
 *
 * Each event is described once, by a table of its wire fields (name, kind,
 * offset in the struct, bounds). One generic decoder, one generic encoder and
 * one set of value checks walk those tables, so the three events cannot drift
 * apart in how strictly they are read and written. The JSON Schemas in
 * schemas/ state the same rules; change both together.
 */
#include "ev_event.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <uuid/uuid.h>

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))
#define JAVA_PACKAGE "com.devcraftly.orders.events."

typedef enum {
    FIELD_ID,    /* 1..max printable ASCII bytes, no spaces (ev_id_valid) */
    FIELD_TEXT,  /* 0..max bytes of UTF-8 without control characters */
    FIELD_INT32, /* JSON integer (no fraction, no exponent) in [lo, hi] */
    FIELD_INT64,
    FIELD_BOOL, /* JSON true or false */
} field_kind;

typedef struct {
    const char *name; /* the key on the wire */
    field_kind kind;
    size_t offset;  /* of the member in the event struct */
    size_t max;     /* strings: longest accepted length in bytes */
    int64_t lo, hi; /* integers: accepted range, inclusive */
} field_spec;

#define MEMBER_MAX(type, member) (sizeof(((type *)0)->member) - 1)
#define F_STR(k, n, type, member)                                                                  \
    {                                                                                              \
        n, k, offsetof(type, member), MEMBER_MAX(type, member), 0, 0                               \
    }
#define F_INT(k, n, type, member, l, h)                                                            \
    {                                                                                              \
        n, k, offsetof(type, member), 0, l, h                                                      \
    }
#define F_BOOL(n, type, member)                                                                    \
    {                                                                                              \
        n, FIELD_BOOL, offsetof(type, member), 0, 0, 0                                             \
    }

/* Keys in the seed's record order; the encoder writes them in this order. */
static const field_spec order_created_fields[] = {
    F_STR(FIELD_ID, "orderId", ev_order_created, order_id),
    F_STR(FIELD_ID, "customerId", ev_order_created, customer_id),
    F_STR(FIELD_ID, "sku", ev_order_created, sku),
    F_INT(FIELD_INT32, "quantity", ev_order_created, quantity, 1, 1000000),
    F_INT(FIELD_INT64, "amountCents", ev_order_created, amount_cents, 0, INT64_C(1000000000000)),
};

_Static_assert(sizeof(((ev_order_created *)0)->quantity) == sizeof(int32_t), "FIELD_INT32");
_Static_assert(sizeof(((ev_order_created *)0)->amount_cents) == sizeof(int64_t), "FIELD_INT64");

static const field_spec payment_completed_fields[] = {
    F_STR(FIELD_ID, "orderId", ev_payment_completed, order_id),
    F_BOOL("approved", ev_payment_completed, approved),
    F_STR(FIELD_TEXT, "reason", ev_payment_completed, reason),
};

static const field_spec inventory_reserved_fields[] = {
    F_STR(FIELD_ID, "orderId", ev_inventory_reserved, order_id),
    F_BOOL("reserved", ev_inventory_reserved, reserved),
    F_STR(FIELD_TEXT, "reason", ev_inventory_reserved, reason),
};

static const struct {
    const char *name;
    const char *java_class;
    const char *topic;
} types[] = {
    [EV_ORDER_CREATED] = {"OrderCreated", JAVA_PACKAGE "OrderCreated", EV_TOPIC_ORDERS_CREATED},
    [EV_PAYMENT_COMPLETED] = {"PaymentCompleted", JAVA_PACKAGE "PaymentCompleted",
                              EV_TOPIC_PAYMENTS_COMPLETED},
    [EV_INVENTORY_RESERVED] = {"InventoryReserved", JAVA_PACKAGE "InventoryReserved",
                               EV_TOPIC_INVENTORY_RESERVED},
};

static bool type_known(ev_type t)
{
    return (size_t)t < ELEMENTSOF(types) && types[t].name;
}

const char *ev_type_name(ev_type t)
{
    return type_known(t) ? types[t].name : NULL;
}

const char *ev_type_java_class(ev_type t)
{
    return type_known(t) ? types[t].java_class : NULL;
}

const char *ev_type_topic(ev_type t)
{
    return type_known(t) ? types[t].topic : NULL;
}

static bool equals(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

ev_type ev_type_from_name(const char *name, size_t len)
{
    if (!name)
        return 0;
    for (size_t i = 0; i < ELEMENTSOF(types); i++)
        if (types[i].name &&
            (equals(name, len, types[i].name) || equals(name, len, types[i].java_class)))
            return (ev_type)i;
    return 0;
}

/* ---- value checks, shared by decoder and encoder ---- */

static bool id_bytes_valid(const char *s, size_t n, size_t max)
{
    if (n < 1 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

bool ev_id_valid(const char *s, size_t max)
{
    return s && id_bytes_valid(s, strnlen(s, max + 1), max);
}

/* Length of the UTF-8 sequence that lead byte b starts, 0 if b cannot lead. */
static size_t utf8_seq_len(unsigned char b)
{
    if (b < 0x80)
        return 1;
    if (b >= 0xc2 && b <= 0xdf)
        return 2;
    if (b >= 0xe0 && b <= 0xef)
        return 3;
    if (b >= 0xf0 && b <= 0xf4)
        return 4;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) and its code point,
 * or 0 if malformed (truncated, overlong, surrogate, above U+10FFFF). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *ret_cp)
{
    static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len = utf8_seq_len(s[0]);
    uint32_t cp;

    if (len == 0 || len > n)
        return 0;
    cp = len == 1 ? s[0] : s[0] & (0x7fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min_cp[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    *ret_cp = cp;
    return len;
}

/* Unicode general category Cc: C0, DEL and C1. This includes NUL, so a
 * string with an embedded NUL (json_string_length() > strlen()) fails here. */
static bool text_bytes_valid(const char *s, size_t n, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    uint32_t cp;

    if (n > max)
        return false;
    for (size_t i = 0, step; i < n; i += step) {
        step = utf8_next(p + i, n - i, &cp);
        if (step == 0 || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f))
            return false;
    }
    return true;
}

static bool string_valid(const field_spec *f, const char *s, size_t n)
{
    return f->kind == FIELD_ID ? id_bytes_valid(s, n, f->max) : text_bytes_valid(s, n, f->max);
}

static int64_t int_member(const field_spec *f, const void *ev)
{
    const char *p = (const char *)ev + f->offset;
    return f->kind == FIELD_INT32 ? *(const int32_t *)(const void *)p
                                  : *(const int64_t *)(const void *)p;
}

/* ---- decoding ---- */

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;

    if (err && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

/* The one message per field, whatever was wrong with its value. */
static int field_fail(const field_spec *f, char *err, size_t errlen)
{
    switch (f->kind) {
    case FIELD_ID:
        return fail(err, errlen, -EINVAL,
                    "field \"%s\" must be a string of 1 to %zu printable ascii characters "
                    "without spaces",
                    f->name, f->max);
    case FIELD_TEXT:
        return fail(err, errlen, -EINVAL,
                    "field \"%s\" must be a string of at most %zu bytes without control "
                    "characters",
                    f->name, f->max);
    case FIELD_INT32:
    case FIELD_INT64:
        return fail(err, errlen, -EINVAL, "field \"%s\" must be an integer between %lld and %lld",
                    f->name, (long long)f->lo, (long long)f->hi);
    case FIELD_BOOL:
        return fail(err, errlen, -EINVAL, "field \"%s\" must be true or false", f->name);
    }
    return -EINVAL;
}

static int decode_field(const field_spec *f, json_t *v, void *ev)
{
    char *p = (char *)ev + f->offset;
    json_int_t n;

    switch (f->kind) {
    case FIELD_ID:
    case FIELD_TEXT:
        if (!json_is_string(v) || !string_valid(f, json_string_value(v), json_string_length(v)))
            return -EINVAL;
        memcpy(p, json_string_value(v), json_string_length(v) + 1);
        return 0;
    case FIELD_INT32:
    case FIELD_INT64:
        /* jansson reads 1.5, 1.0 and 1e3 as reals, so they fail here. */
        if (!json_is_integer(v))
            return -EINVAL;
        n = json_integer_value(v);
        if (n < f->lo || n > f->hi)
            return -EINVAL;
        if (f->kind == FIELD_INT32)
            *(int32_t *)(void *)p = (int32_t)n;
        else
            *(int64_t *)(void *)p = (int64_t)n;
        return 0;
    case FIELD_BOOL:
        if (!json_is_boolean(v))
            return -EINVAL;
        *(bool *)(void *)p = json_is_true(v);
        return 0;
    }
    return -EINVAL;
}

/* JSON_ALLOW_NUL lets "\u0000" through the parser so that it is reported
 * against its field (-EINVAL) rather than as malformed JSON; the string
 * checks reject it. Without JSON_DISABLE_EOF_CHECK anything but whitespace
 * after the value is an error; without JSON_DECODE_ANY a scalar is too. */
static int load_object(const void *buf, size_t len, json_t **ret, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);

    if (!root && json_error_code(&je) == json_error_numeric_overflow)
        return fail(err, errlen, -EINVAL, "number out of range at line %d, column %d: %s", je.line,
                    je.column, je.text);
    if (!root)
        return fail(err, errlen, -EBADMSG, "invalid json at line %d, column %d: %s", je.line,
                    je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(err, errlen, -EBADMSG, "invalid json: expected an object");
    }
    *ret = root;
    return 0;
}

/* Decodes into *ev (the caller's scratch copy); unknown keys are ignored. */
static int decode(const field_spec *fields, size_t n, const void *buf, size_t len, void *ev,
                  char *err, size_t errlen)
{
    json_t *root = NULL, *v;
    int r = load_object(buf, len, &root, err, errlen);

    for (size_t i = 0; r >= 0 && i < n; i++) {
        v = json_object_get(root, fields[i].name);
        if (!v)
            r = fail(err, errlen, -EINVAL, "field \"%s\" is required", fields[i].name);
        else if (decode_field(&fields[i], v, ev) < 0)
            r = field_fail(&fields[i], err, errlen);
    }
    json_decref(root);
    return r;
}

int ev_order_created_decode(const void *buf, size_t len, ev_order_created *ret, char *err,
                            size_t errlen)
{
    ev_order_created e = {0};
    int r =
        decode(order_created_fields, ELEMENTSOF(order_created_fields), buf, len, &e, err, errlen);
    if (r < 0)
        return r;
    *ret = e;
    return 0;
}

int ev_payment_completed_decode(const void *buf, size_t len, ev_payment_completed *ret, char *err,
                                size_t errlen)
{
    ev_payment_completed e = {0};
    int r = decode(payment_completed_fields, ELEMENTSOF(payment_completed_fields), buf, len, &e,
                   err, errlen);
    if (r < 0)
        return r;
    *ret = e;
    return 0;
}

int ev_inventory_reserved_decode(const void *buf, size_t len, ev_inventory_reserved *ret, char *err,
                                 size_t errlen)
{
    ev_inventory_reserved e = {0};
    int r = decode(inventory_reserved_fields, ELEMENTSOF(inventory_reserved_fields), buf, len, &e,
                   err, errlen);
    if (r < 0)
        return r;
    *ret = e;
    return 0;
}

/* ---- encoding ---- */

/* Builds the JSON value of one member, or returns -EINVAL if it breaks the
 * decoder's rules (including a string buffer without its NUL). */
static int encode_field(const field_spec *f, const void *ev, json_t **ret)
{
    const char *p = (const char *)ev + f->offset;
    int64_t n;
    size_t len;

    switch (f->kind) {
    case FIELD_ID:
    case FIELD_TEXT:
        len = strnlen(p, f->max + 1);
        if (!string_valid(f, p, len))
            return -EINVAL;
        *ret = json_stringn(p, len);
        break;
    case FIELD_INT32:
    case FIELD_INT64:
        n = int_member(f, ev);
        if (n < f->lo || n > f->hi)
            return -EINVAL;
        *ret = json_integer((json_int_t)n);
        break;
    case FIELD_BOOL:
        *ret = json_boolean(*(const bool *)(const void *)p);
        break;
    default:
        return -EINVAL;
    }
    return *ret ? 0 : -ENOMEM;
}

static int encode(const field_spec *fields, size_t n, const void *ev, char **ret_json)
{
    json_t *root = json_object(), *v;
    char *s;
    int r = root ? 0 : -ENOMEM;

    for (size_t i = 0; r >= 0 && i < n; i++) {
        r = encode_field(&fields[i], ev, &v);
        if (r >= 0 && json_object_set_new(root, fields[i].name, v) < 0)
            r = -ENOMEM;
    }
    if (r >= 0) {
        s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (s)
            *ret_json = s;
        else
            r = -ENOMEM;
    }
    json_decref(root);
    return r;
}

int ev_order_created_encode(const ev_order_created *e, char **ret_json)
{
    return encode(order_created_fields, ELEMENTSOF(order_created_fields), e, ret_json);
}

int ev_payment_completed_encode(const ev_payment_completed *e, char **ret_json)
{
    return encode(payment_completed_fields, ELEMENTSOF(payment_completed_fields), e, ret_json);
}

int ev_inventory_reserved_encode(const ev_inventory_reserved *e, char **ret_json)
{
    return encode(inventory_reserved_fields, ELEMENTSOF(inventory_reserved_fields), e, ret_json);
}

int ev_outcome_decode(ev_type type, const void *buf, size_t len, char *order_id, bool *yes,
                      char *why, char *err, size_t errlen)
{
    int r;

    if (type == EV_PAYMENT_COMPLETED) {
        ev_payment_completed e;
        if ((r = ev_payment_completed_decode(buf, len, &e, err, errlen)) < 0)
            return r;
        *yes = e.approved;
        memcpy(order_id, e.order_id, EV_ID_MAX + 1);
        memcpy(why, e.reason, EV_REASON_MAX + 1);
        return 0;
    }
    ev_inventory_reserved e;
    if ((r = ev_inventory_reserved_decode(buf, len, &e, err, errlen)) < 0)
        return r;
    *yes = e.reserved;
    memcpy(order_id, e.order_id, EV_ID_MAX + 1);
    memcpy(why, e.reason, EV_REASON_MAX + 1);
    return 0;
}

/* ---- identifiers ---- */

/* getrandom(2) for at most 256 bytes does not return short once the pool is
 * ready; EINTR is retried. If the syscall is unavailable, libuuid's own
 * random source (which falls back to /dev/urandom) fills the bytes. */
static void fill_random(unsigned char *buf, size_t n)
{
    ssize_t k;
    uuid_t u;

    for (size_t done = 0; done < n;) {
        k = getrandom(buf + done, n - done, 0);
        if (k > 0) {
            done += (size_t)k;
        } else if (k < 0 && errno != EINTR) {
            uuid_generate_random(u);
            k = (ssize_t)(n - done < sizeof(u) ? n - done : sizeof(u));
            memcpy(buf + done, u, (size_t)k);
            done += (size_t)k;
        }
    }
}

/* Random bytes from a per-thread buffer, refilled 256 bytes at a time: an
 * order needs several ids (order, event, trace, span), and a system call
 * each is a measurable part of its cost. The bytes are only identifiers,
 * never secrets; the daemons do not fork. */
static void random_bytes(unsigned char *buf, size_t n)
{
    static __thread unsigned char pool[256];
    static __thread size_t left;

    if (n > sizeof(pool)) {
        fill_random(buf, n);
        return;
    }
    if (left < n) {
        fill_random(pool, sizeof(pool));
        left = sizeof(pool);
    }
    memcpy(buf, pool + sizeof(pool) - left, n);
    memset(pool + sizeof(pool) - left, 0, n); /* each byte is handed out once */
    left -= n;
}

void ev_uuid(char out[37])
{
    uuid_t u;

    /* RFC 4122 version 4: 122 random bits. */
    random_bytes(u, sizeof(u));
    u[6] = (unsigned char)((u[6] & 0x0f) | 0x40);
    u[8] = (unsigned char)((u[8] & 0x3f) | 0x80);
    uuid_unparse_lower(u, out);
}

static bool all_zero(const unsigned char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

static char *hex(char *out, const unsigned char *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        *out++ = digits[b[i] >> 4];
        *out++ = digits[b[i] & 0xf];
    }
    return out;
}

void ev_traceparent_new(char out[56])
{
    unsigned char trace[16], span[8];
    char *p = out;

    do
        random_bytes(trace, sizeof(trace));
    while (all_zero(trace, sizeof(trace)));
    do
        random_bytes(span, sizeof(span));
    while (all_zero(span, sizeof(span)));

    memcpy(p, "00-", 3);
    p = hex(p + 3, trace, sizeof(trace));
    *p++ = '-';
    p = hex(p, span, sizeof(span));
    memcpy(p, "-01", 4); /* sampled; includes the NUL */
}

void ev_span_id(char out[17])
{
    unsigned char span[8];

    do
        random_bytes(span, sizeof(span));
    while (all_zero(span, sizeof(span)));
    *hex(out, span, sizeof(span)) = '\0';
}

/* n lowercase hex digits; *ret_nonzero tells whether any is not '0'. */
static bool lower_hex(const char *s, size_t n, bool *ret_nonzero)
{
    bool nonzero = false;

    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
        nonzero = nonzero || s[i] != '0';
    }
    *ret_nonzero = nonzero;
    return true;
}

/* version "00" "-" trace-id(32) "-" parent-id(16) "-" flags(2): 55 bytes. */
bool ev_traceparent_valid(const char *s, size_t len)
{
    bool trace_nz, span_nz, flags_nz;

    if (!s || len != 55 || memcmp(s, "00-", 3) != 0 || s[35] != '-' || s[52] != '-')
        return false;
    return lower_hex(s + 3, 32, &trace_nz) && trace_nz && lower_hex(s + 36, 16, &span_nz) &&
           span_nz && lower_hex(s + 53, 2, &flags_nz);
}
