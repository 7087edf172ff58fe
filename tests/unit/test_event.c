/*
 * test_event.c - the event codecs, type names, ids and traceparents (ev_event).
 *
 * Bad input is built from one valid document per event by replacing or
 * dropping one field at a time, so every field of every event meets every
 * kind of wrong value. A rejected decode must return the documented code,
 * leave *ret untouched and name the field in a lowercase message.
 */
#include "ev_event.h"

#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

typedef union {
    ev_order_created oc;
    ev_payment_completed pc;
    ev_inventory_reserved ir;
} ev_any;

typedef struct {
    const char *key;
    const char *raw; /* the valid value, as JSON text */
    char kind;       /* 'i'd, 't'ext, 'n'umber, 'b'oolean */
} kv;

typedef struct {
    const char *name;
    const kv *fields;
    size_t n_fields;
    int (*decode)(const char *buf, size_t len, ev_any *ret, char *err, size_t errlen);
} event_desc;

static const kv oc_fields[] = {
    {"orderId", "\"o-1\"", 'i'}, {"customerId", "\"cust-7\"", 'i'}, {"sku", "\"SKU-42\"", 'i'},
    {"quantity", "3", 'n'},      {"amountCents", "1999", 'n'},
};
static const kv pc_fields[] = {
    {"orderId", "\"o-2\"", 'i'}, {"approved", "true", 'b'}, {"reason", "\"OK\"", 't'}};
static const kv ir_fields[] = {
    {"orderId", "\"o-3\"", 'i'}, {"reserved", "false", 'b'}, {"reason", "\"OUT_OF_STOCK\"", 't'}};

static int dec_oc(const char *buf, size_t len, ev_any *ret, char *err, size_t errlen)
{
    return ev_order_created_decode(buf, len, &ret->oc, err, errlen);
}

static int dec_pc(const char *buf, size_t len, ev_any *ret, char *err, size_t errlen)
{
    return ev_payment_completed_decode(buf, len, &ret->pc, err, errlen);
}

static int dec_ir(const char *buf, size_t len, ev_any *ret, char *err, size_t errlen)
{
    return ev_inventory_reserved_decode(buf, len, &ret->ir, err, errlen);
}

static const event_desc events[] = {
    {"OrderCreated", oc_fields, ELEMENTSOF(oc_fields), dec_oc},
    {"PaymentCompleted", pc_fields, ELEMENTSOF(pc_fields), dec_pc},
    {"InventoryReserved", ir_fields, ELEMENTSOF(ir_fields), dec_ir},
};

/* ---- helpers ---- */

/* Strings made by the helpers belong to the running test and are freed by
 * its teardown, so the tests read as data rather than as memory management. */
static char **owned;
static size_t n_owned;

static char *own(char *s)
{
    char **grown = realloc(owned, (n_owned + 1) * sizeof(*owned));

    assert_non_null(s);
    assert_non_null(grown);
    owned = grown;
    owned[n_owned++] = s;
    return s;
}

static int free_owned(void **state)
{
    (void)state;
    for (size_t i = 0; i < n_owned; i++)
        free(owned[i]);
    free(owned);
    owned = NULL;
    n_owned = 0;
    return 0;
}

/* Concatenates the NULL-terminated list of strings into a new string. */
static char *cat(const char *first, ...)
{
    va_list ap;
    size_t len = 0;
    char *s, *p;

    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *))
        len += strlen(a);
    va_end(ap);
    s = p = own(malloc(len + 1));
    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *))
        p = stpcpy(p, a);
    va_end(ap);
    return s;
}

static char *repeat(const char *unit, size_t n)
{
    size_t u = strlen(unit);
    char *s = own(malloc(u * n + 1));

    for (size_t i = 0; i < n; i++)
        memcpy(s + i * u, unit, u);
    s[u * n] = '\0';
    return s;
}

/* The valid document of ev with field key's value replaced by raw (dropped
 * if raw is NULL) and extra members (",\"k\":v...") appended. */
static char *build(const event_desc *ev, const char *key, const char *raw, const char *extra)
{
    const char *s = "{";

    for (size_t i = 0; i < ev->n_fields; i++) {
        const char *v = ev->fields[i].raw;
        if (key && strcmp(key, ev->fields[i].key) == 0)
            v = raw;
        if (v)
            s = cat(s, s[1] ? "," : "", "\"", ev->fields[i].key, "\":", v, NULL);
    }
    return cat(s, extra ? extra : "", "}", NULL);
}

static void check_message(const char *err, const char *field)
{
    size_t n = strlen(err);

    if (n == 0 || !islower((unsigned char)err[0]) || err[n - 1] == '.')
        fail_msg("bad error message: \"%s\"", err);
    if (field) {
        char quoted[80];
        snprintf(quoted, sizeof(quoted), "field \"%s\"", field);
        if (!strstr(err, quoted))
            fail_msg("error message \"%s\" does not name %s", err, quoted);
    }
}

static void expect_reject_n(const event_desc *ev, const char *json, size_t len, int code,
                            const char *field)
{
    ev_any ret, before;
    char err[256] = "";
    int r;

    memset(&ret, 0xa5, sizeof(ret));
    memcpy(&before, &ret, sizeof(ret));
    r = ev->decode(json, len, &ret, err, sizeof(err));
    if (r != code)
        fail_msg("%s: decoding '%.300s' returned %d (%s), expected %d", ev->name, json, r, err,
                 code);
    assert_memory_equal(&ret, &before, sizeof(ret));
    check_message(err, field);
}

static void expect_reject(const event_desc *ev, const char *json, int code, const char *field)
{
    expect_reject_n(ev, json, strlen(json), code, field);
}

static void expect_accept(const event_desc *ev, const char *json, ev_any *ret)
{
    char err[256] = "";
    int r = ev->decode(json, strlen(json), ret, err, sizeof(err));

    if (r != 0)
        fail_msg("%s: decoding '%.300s' returned %d (%s), expected 0", ev->name, json, r, err);
}

static char *quoted(const char *s)
{
    return cat("\"", s, "\"", NULL);
}

static void reject_doc(const event_desc *ev, const char *key, const char *raw, const char *extra,
                       int code, const char *field)
{
    expect_reject(ev, build(ev, key, raw, extra), code, field);
}

static ev_any accept_doc(const event_desc *ev, const char *key, const char *raw, const char *extra)
{
    ev_any a;

    expect_accept(ev, build(ev, key, raw, extra), &a);
    return a;
}

/* Every event that has field key, with its value set to raw, is rejected. */
static void reject_value(const char *key, const char *raw, int code, bool names_field)
{
    for (size_t e = 0; e < ELEMENTSOF(events); e++)
        for (size_t i = 0; i < events[e].n_fields; i++)
            if (strcmp(events[e].fields[i].key, key) == 0)
                reject_doc(&events[e], key, raw, NULL, code, names_field ? key : NULL);
}

static ev_order_created accept_order_field(const char *key, const char *raw)
{
    return accept_doc(&events[0], key, raw, NULL).oc;
}

/* ---- round trips ---- */

static void round_trip_order(const ev_order_created *in)
{
    ev_order_created out;
    char *json = NULL;

    assert_int_equal(ev_order_created_encode(in, &json), 0);
    assert_int_equal(ev_order_created_decode(own(json), strlen(json), &out, NULL, 0), 0);
    assert_string_equal(out.order_id, in->order_id);
    assert_string_equal(out.customer_id, in->customer_id);
    assert_string_equal(out.sku, in->sku);
    assert_int_equal(out.quantity, in->quantity);
    assert_true(out.amount_cents == in->amount_cents);
}

static void test_round_trip_order_created(void **state)
{
    ev_order_created e = {"o-1", "cust-7", "SKU-42", 3, 1999};
    char *json = NULL;

    (void)state;
    assert_int_equal(ev_order_created_encode(&e, &json), 0);
    /* Compact, keys in the seed's record order. */
    assert_string_equal(own(json), "{\"orderId\":\"o-1\",\"customerId\":\"cust-7\","
                                   "\"sku\":\"SKU-42\",\"quantity\":3,\"amountCents\":1999}");
    round_trip_order(&e);
    e.quantity = 1;
    e.amount_cents = 0;
    round_trip_order(&e);
    e.quantity = 1000000;
    e.amount_cents = INT64_C(1000000000000);
    memcpy(e.order_id, repeat("x", EV_ID_MAX), EV_ID_MAX + 1);
    snprintf(e.customer_id, sizeof(e.customer_id), "%s", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~");
    memcpy(e.sku, repeat("~", EV_SKU_MAX), EV_SKU_MAX + 1);
    round_trip_order(&e);
}

static void test_round_trip_replies(void **state)
{
    const char *reasons[] = {"OK",
                             "",
                             "INSUFFICIENT_FUNDS",
                             "quote \" back \\ /",
                             "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x93\xa6",
                             "nbsp\xc2\xa0here",
                             repeat("r", EV_REASON_MAX)};

    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(reasons); i++)
        for (int yes = 0; yes <= 1; yes++) {
            ev_payment_completed p = {"o-2", yes, ""}, p2;
            ev_inventory_reserved v = {"o-3", yes, ""}, v2;
            char *jp = NULL, *jv = NULL;

            memcpy(p.reason, reasons[i], strlen(reasons[i]) + 1);
            memcpy(v.reason, reasons[i], strlen(reasons[i]) + 1);
            assert_int_equal(ev_payment_completed_encode(&p, &jp), 0);
            assert_int_equal(ev_inventory_reserved_encode(&v, &jv), 0);
            assert_int_equal(ev_payment_completed_decode(own(jp), strlen(jp), &p2, NULL, 0), 0);
            assert_int_equal(ev_inventory_reserved_decode(own(jv), strlen(jv), &v2, NULL, 0), 0);
            assert_string_equal(p2.order_id, p.order_id);
            assert_int_equal(p2.approved, p.approved);
            assert_string_equal(p2.reason, reasons[i]);
            assert_string_equal(v2.order_id, v.order_id);
            assert_int_equal(v2.reserved, v.reserved);
            assert_string_equal(v2.reason, reasons[i]);
        }
}

static void test_reply_key_order(void **state)
{
    ev_payment_completed p = {"o-2", true, "OK"};
    ev_inventory_reserved v = {"o-3", false, "OUT_OF_STOCK"};
    char *jp = NULL, *jv = NULL;

    (void)state;
    assert_int_equal(ev_payment_completed_encode(&p, &jp), 0);
    assert_int_equal(ev_inventory_reserved_encode(&v, &jv), 0);
    assert_string_equal(own(jp), "{\"orderId\":\"o-2\",\"approved\":true,\"reason\":\"OK\"}");
    assert_string_equal(own(jv),
                        "{\"orderId\":\"o-3\",\"reserved\":false,\"reason\":\"OUT_OF_STOCK\"}");
}

/* ---- decoder: what it accepts ---- */

static void test_decode_accepts(void **state)
{
    static const char *const extras[] = {
        ",\"note\":\"x\"", ",\"v\":2,\"r\":1.5,\"n\":null,\"t\":true",
        ",\"obj\":{\"a\":[1,{\"b\":[]}]}", ",\"unicode\":\"\\u0000\\ud83d\\ude00\"",
        ",\"big\":1e300"};
    const char *buf = "{\"orderId\":\"o-1\",\"customerId\":\"c\",\"sku\":\"s\","
                      "\"quantity\":1,\"amountCents\":-0}TRAILING";
    ev_order_created oc;
    ev_any a;

    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++) {
        for (size_t i = 0; i < ELEMENTSOF(extras); i++)
            accept_doc(&events[e], NULL, NULL, extras[i]);
        expect_accept(&events[e], cat(" \t\r\n", build(&events[e], NULL, NULL, NULL), "\n", NULL),
                      &a);
    }
    /* Only len bytes are read; "-0" is the integer 0. */
    assert_int_equal(ev_order_created_decode(buf, (size_t)(strchr(buf, 'T') - buf), &oc, NULL, 0),
                     0);
    assert_int_equal(oc.amount_cents, 0);
    /* Order of keys does not matter; escapes are decoded before the checks. */
    expect_accept(&events[1],
                  "{\"reason\":\"\\u004fK\",\"approved\":false,\"orderId\":\"\\u0041\"}", &a);
    assert_string_equal(a.pc.order_id, "A");
    assert_string_equal(a.pc.reason, "OK");
    assert_false(a.pc.approved);
}

/* Deep nesting in an unknown field is ignored up to jansson's parser depth
 * limit (2048) and rejected as malformed beyond it, without a crash. */
static void test_deep_nesting(void **state)
{
    char *shallow = cat(",\"deep\":", repeat("[", 64), repeat("]", 64), NULL);
    char *deep = cat(",\"deep\":", repeat("[", 100000), repeat("]", 100000), NULL);

    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++) {
        accept_doc(&events[e], NULL, NULL, shallow);
        reject_doc(&events[e], NULL, NULL, deep, -EBADMSG, NULL);
    }
}

/* ---- decoder: malformed documents ---- */

static void test_not_a_json_object(void **state)
{
    static const char *const bad[] = {"",
                                      "   ",
                                      "hello",
                                      "{",
                                      "}",
                                      "null",
                                      "42",
                                      "\"s\"",
                                      "true",
                                      "[]",
                                      "{'a':1}",
                                      "{\"a\":1,}",
                                      "{\"a\":NaN}",
                                      "/* c */{}",
                                      "\xef\xbb\xbf{}",
                                      "{\"a\":\"\\ud800\"}",
                                      "{\"a\":\"\xff\"}",
                                      "{\"a\":\"tab\tinside\"}"};
    static const char *const wrappers[][2] = {{"[", "]"}, {"", " x"},   {"", "{}"},    {"", ","},
                                              {"", "]"},  {"[1,", "]"}, {"\"k\":", ""}};

    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++) {
        char *valid = build(&events[e], NULL, NULL, NULL), *nul = cat(valid, "#", NULL);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
            expect_reject(&events[e], bad[i], -EBADMSG, NULL);
        for (size_t i = 0; i < ELEMENTSOF(wrappers); i++)
            expect_reject(&events[e], cat(wrappers[i][0], valid, wrappers[i][1], NULL), -EBADMSG,
                          NULL);
        /* A raw NUL byte after the object is trailing garbage too. */
        nul[strlen(valid)] = '\0';
        expect_reject_n(&events[e], nul, strlen(valid) + 1, -EBADMSG, NULL);
        expect_reject_n(&events[e], NULL, 0, -EBADMSG, NULL);
    }
}

/* Repeating a known key, an unknown key or a key inside an unknown object. */
static void test_duplicate_keys(void **state)
{
    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++) {
        for (size_t i = 0; i < events[e].n_fields; i++) {
            const kv *f = &events[e].fields[i];
            reject_doc(&events[e], NULL, NULL, cat(",\"", f->key, "\":", f->raw, NULL), -EBADMSG,
                       NULL);
        }
        reject_doc(&events[e], NULL, NULL, ",\"x\":1,\"x\":1", -EBADMSG, NULL);
        reject_doc(&events[e], NULL, NULL, ",\"o\":{\"y\":1,\"y\":2}", -EBADMSG, NULL);
    }
}

/* ---- decoder: fields ---- */

static void test_missing_each_field(void **state)
{
    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++) {
        expect_reject(&events[e], "{}", -EINVAL, NULL);
        for (size_t i = 0; i < events[e].n_fields; i++)
            reject_doc(&events[e], events[e].fields[i].key, NULL, NULL, -EINVAL,
                       events[e].fields[i].key);
    }
}

static void test_wrong_type_each_field(void **state)
{
    static const char *const for_string[] = {"1",  "1.5", "true",      "false",         "null",
                                             "[]", "{}",  "[\"o-1\"]", "{\"a\":\"b\"}", NULL};
    static const char *const for_number[] = {"\"1\"", "\"\"", "true", "false", "null",
                                             "[]",    "{}",   "[1]",  NULL};
    static const char *const for_bool[] = {"0",    "1",  "\"true\"", "\"false\"", "\"\"",
                                           "null", "[]", "{}",       "[true]",    NULL};

    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++)
        for (size_t i = 0; i < events[e].n_fields; i++) {
            const kv *f = &events[e].fields[i];
            const char *const *vals = f->kind == 'n'   ? for_number
                                      : f->kind == 'b' ? for_bool
                                                       : for_string;
            for (; *vals; vals++)
                reject_doc(&events[e], f->key, *vals, NULL, -EINVAL, f->key);
        }
}

static void test_quantity_bounds(void **state)
{
    static const char *const bad[] = {
        "0",   "-1",  "-0",  "1000001", "2147483648",          "-2147483649",         "1.5", "1.0",
        "1e3", "1E3", "1e0", "10e-1",   "9223372036854775807", "-9223372036854775808"};

    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        reject_value("quantity", bad[i], -EINVAL, true);
    /* Too big for jansson's integer type: rejected before the fields are read. */
    reject_value("quantity", "9223372036854775808", -EINVAL, false);
    reject_value("quantity", "99999999999999999999999", -EINVAL, false);
    assert_int_equal(accept_order_field("quantity", "1").quantity, 1);
    assert_int_equal(accept_order_field("quantity", "1000000").quantity, 1000000);
}

static void test_amount_bounds(void **state)
{
    static const char *const bad[] = {
        "-1",  "1000000000001", "9223372036854775807", "-9223372036854775808", "1.5", "0.0",
        "1e3", "100.00"};
    static const char *const overflow[] = {"9223372036854775808", "18446744073709551616",
                                           "-9223372036854775809", "1e400"};

    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        reject_value("amountCents", bad[i], -EINVAL, true);
    for (size_t i = 0; i < ELEMENTSOF(overflow); i++)
        reject_value("amountCents", overflow[i], -EINVAL, false);
    assert_true(accept_order_field("amountCents", "0").amount_cents == 0);
    assert_true(accept_order_field("amountCents", "1000000000000").amount_cents ==
                INT64_C(1000000000000));
}

/* A number that does not fit jansson's types fails the whole document, even
 * in a field the decoder would ignore (documented limitation). */
static void test_overflow_in_unknown_field(void **state)
{
    (void)state;
    for (size_t e = 0; e < ELEMENTSOF(events); e++)
        reject_doc(&events[e], NULL, NULL, ",\"future\":123456789012345678901234567890", -EINVAL,
                   NULL);
}

static void test_id_strings(void **state)
{
    static const char *const keys[] = {"orderId", "customerId", "sku"};
    static const char *const bad[] = {"\"\"",          "\"a b\"",     "\" a\"",      "\"a\\tb\"",
                                      "\"a\\nb\"",     "\"\\u007f\"", "\"\\u00e9\"", "\"\xc3\xa9\"",
                                      "\"a\\u0000b\"", "\"\\u0000\"", "\"a\\u0000\""};
    char *longest = repeat("x", EV_ID_MAX);

    (void)state;
    assert_int_equal(EV_ID_MAX, EV_SKU_MAX); /* one length for the three keys */
    for (size_t k = 0; k < ELEMENTSOF(keys); k++) {
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
            reject_value(keys[k], bad[i], -EINVAL, true);
        reject_value(keys[k], quoted(repeat("x", EV_ID_MAX + 1)), -EINVAL, true);
    }
    assert_string_equal(accept_order_field("orderId", quoted(longest)).order_id, longest);
    assert_string_equal(accept_order_field("customerId", quoted(longest)).customer_id, longest);
    assert_string_equal(accept_order_field("sku", quoted(longest)).sku, longest);
}

static void test_reason_strings(void **state)
{
    static const char *const bad[] = {"\"\\n\"",      "\"a\\tb\"",   "\"\\u0000\"", "\"ok\\u0000\"",
                                      "\"\\u001f\"",  "\"\\u007f\"", "\"\\u0085\"", "\"\\u009f\"",
                                      "\"\xc2\x85\"", "\"\\r\""};
    /* U+2713 is 3 bytes: 42 of them fit in 128 bytes, 43 do not. */
    char *wide = repeat("\xe2\x9c\x93", 42);
    const char *good[] = {"\"\"", "\"\\u00a0\"", "\"\\u2028\"", quoted(repeat("r", EV_REASON_MAX)),
                          quoted(wide)};

    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        reject_value("reason", bad[i], -EINVAL, true);
    reject_value("reason", quoted(repeat("r", EV_REASON_MAX + 1)), -EINVAL, true);
    reject_value("reason", quoted(repeat("\\u2713", 43)), -EINVAL, true);
    for (size_t i = 0; i < ELEMENTSOF(good); i++) {
        accept_doc(&events[1], "reason", good[i], NULL);
        accept_doc(&events[2], "reason", good[i], NULL);
    }
    assert_string_equal(accept_doc(&events[2], "reason", quoted(wide), NULL).ir.reason, wide);
}

static void test_error_buffer(void **state)
{
    const char *json = "{\"orderId\":\"o\",\"approved\":1,\"reason\":\"\"}";
    char small[8];
    ev_payment_completed p;

    (void)state;
    assert_int_equal(ev_payment_completed_decode(json, strlen(json), &p, NULL, 0), -EINVAL);
    assert_int_equal(ev_payment_completed_decode(json, strlen(json), &p, small, 0), -EINVAL);
    memset(small, 'Z', sizeof(small));
    assert_int_equal(ev_payment_completed_decode(json, strlen(json), &p, small, sizeof(small)),
                     -EINVAL);
    assert_int_equal(strlen(small), sizeof(small) - 1);
    assert_memory_equal(small, "field \"", 7);
}

/* ---- encoder ---- */

#define SENTINEL ((char *)&sentinel_target)
static char sentinel_target;

static void test_encoder_rejects_order(void **state)
{
    static const ev_order_created good = {"o-1", "cust-7", "SKU-42", 3, 1999};
    static const char *const bad_ids[] = {"", "a b", "tab\t", "\x7f", "\xc3\xa9", " "};
    static const int32_t bad_qty[] = {0, -1, 1000001, INT32_MIN, INT32_MAX};
    static const int64_t bad_amt[] = {-1, INT64_C(1000000000001), INT64_MAX, INT64_MIN};
    ev_order_created e;
    char *json = SENTINEL;

    (void)state;
    for (size_t f = 0; f < 3; f++) {
        char *slot[] = {e.order_id, e.customer_id, e.sku};
        for (size_t i = 0; i <= ELEMENTSOF(bad_ids); i++) {
            e = good;
            if (i < ELEMENTSOF(bad_ids))
                memcpy(slot[f], bad_ids[i], strlen(bad_ids[i]) + 1);
            else
                memset(slot[f], 'x', EV_ID_MAX + 1); /* no NUL in the buffer */
            assert_int_equal(ev_order_created_encode(&e, &json), -EINVAL);
            assert_ptr_equal(json, SENTINEL);
        }
    }
    for (size_t i = 0; i < ELEMENTSOF(bad_qty); i++) {
        e = good;
        e.quantity = bad_qty[i];
        assert_int_equal(ev_order_created_encode(&e, &json), -EINVAL);
    }
    for (size_t i = 0; i < ELEMENTSOF(bad_amt); i++) {
        e = good;
        e.amount_cents = bad_amt[i];
        assert_int_equal(ev_order_created_encode(&e, &json), -EINVAL);
    }
    assert_ptr_equal(json, SENTINEL);
    assert_int_equal(ev_order_created_encode(&good, &json), 0);
    own(json);
}

static void test_encoder_rejects_replies(void **state)
{
    /* Control characters, malformed UTF-8 (bad lead, overlong, surrogate,
     * truncated, above U+10FFFF) and C1 controls. */
    static const char *const bad_reasons[] = {"\n",           "a\x01",
                                              "\x7f",         "\xff",
                                              "\xc0\xaf",     "\xed\xa0\x80",
                                              "\xe2\x9c",     "\xf4\x90\x80\x80",
                                              "\xc2\x85",     "\xe2\x9c\x93\x80",
                                              "\xe0\x80\xaf", "\xf0\x80\x80\xaf"};
    static const char *const bad_ids[] = {"", "a b", "\t"};
    char *json = SENTINEL;

    (void)state;
    for (size_t i = 0; i <= ELEMENTSOF(bad_reasons) + ELEMENTSOF(bad_ids); i++) {
        ev_payment_completed p = {"o-2", true, "OK"};
        ev_inventory_reserved v = {"o-3", true, "OK"};
        if (i < ELEMENTSOF(bad_reasons)) {
            memcpy(p.reason, bad_reasons[i], strlen(bad_reasons[i]) + 1);
            memcpy(v.reason, bad_reasons[i], strlen(bad_reasons[i]) + 1);
        } else if (i < ELEMENTSOF(bad_reasons) + ELEMENTSOF(bad_ids)) {
            const char *id = bad_ids[i - ELEMENTSOF(bad_reasons)];
            memcpy(p.order_id, id, strlen(id) + 1);
            memcpy(v.order_id, id, strlen(id) + 1);
        } else {
            memset(p.reason, 'r', sizeof(p.reason)); /* 129 bytes, no NUL */
            memset(v.reason, 'r', sizeof(v.reason));
        }
        assert_int_equal(ev_payment_completed_encode(&p, &json), -EINVAL);
        assert_int_equal(ev_inventory_reserved_encode(&v, &json), -EINVAL);
        assert_ptr_equal(json, SENTINEL);
    }
}

/* ---- names, ids, traceparent ---- */

static void test_type_names(void **state)
{
    static const struct {
        ev_type t;
        const char *name, *topic;
    } all[] = {{EV_ORDER_CREATED, "OrderCreated", EV_TOPIC_ORDERS_CREATED},
               {EV_PAYMENT_COMPLETED, "PaymentCompleted", EV_TOPIC_PAYMENTS_COMPLETED},
               {EV_INVENTORY_RESERVED, "InventoryReserved", EV_TOPIC_INVENTORY_RESERVED}};
    static const char *const unknown[] = {"",
                                          "ordercreated",
                                          "OrderCreate",
                                          "OrderCreatedX",
                                          "com.devcraftly.orders.events.",
                                          "com.devcraftly.orders.events.Unknown",
                                          "org.devcraftly.orders.events.OrderCreated"};

    (void)state;
    assert_string_equal(EV_TOPIC_ORDERS_CREATED, "orders.created");
    assert_string_equal(EV_TOPIC_PAYMENTS_COMPLETED, "payments.completed");
    assert_string_equal(EV_TOPIC_INVENTORY_RESERVED, "inventory.reserved");
    for (size_t i = 0; i < ELEMENTSOF(all); i++) {
        char *java = cat("com.devcraftly.orders.events.", all[i].name, NULL);
        char *padded = cat(all[i].name, "Tail", NULL);
        assert_string_equal(ev_type_name(all[i].t), all[i].name);
        assert_string_equal(ev_type_java_class(all[i].t), java);
        assert_string_equal(ev_type_topic(all[i].t), all[i].topic);
        assert_int_equal(ev_type_from_name(all[i].name, strlen(all[i].name)), all[i].t);
        assert_int_equal(ev_type_from_name(java, strlen(java)), all[i].t);
        /* len, not the NUL, ends the name */
        assert_int_equal(ev_type_from_name(padded, strlen(all[i].name)), all[i].t);
    }
    for (size_t i = 0; i < ELEMENTSOF(unknown); i++)
        assert_int_equal(ev_type_from_name(unknown[i], strlen(unknown[i])), 0);
    assert_int_equal(ev_type_from_name(NULL, 0), 0);
    assert_null(ev_type_name((ev_type)0));
    assert_null(ev_type_name((ev_type)4));
    assert_null(ev_type_java_class((ev_type)0));
    assert_null(ev_type_topic((ev_type)99));
}

static void test_id_valid(void **state)
{
    char *max = repeat("x", EV_ID_MAX), *over = repeat("x", EV_ID_MAX + 1);

    (void)state;
    assert_true(ev_id_valid("a", 1));
    assert_true(ev_id_valid("!~", EV_ID_MAX));
    assert_true(ev_id_valid(max, EV_ID_MAX));
    assert_false(ev_id_valid(over, EV_ID_MAX));
    assert_false(ev_id_valid("ab", 1));
    assert_false(ev_id_valid("", EV_ID_MAX));
    assert_false(ev_id_valid(NULL, EV_ID_MAX));
    assert_false(ev_id_valid("a b", EV_ID_MAX));
    assert_false(ev_id_valid("a\x7f", EV_ID_MAX));
    assert_false(ev_id_valid("\xc3\xa9", EV_ID_MAX));
}

static bool is_lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i]) || s[i] == '\0')
            return false;
    return true;
}

static void test_uuid(void **state)
{
    char a[37], b[37];

    (void)state;
    for (int k = 0; k < 32; k++) {
        ev_uuid(a);
        ev_uuid(b);
        assert_int_equal(strlen(a), 36);
        assert_string_not_equal(a, b);
        for (size_t i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(a[i], '-');
            else
                assert_true(is_lower_hex(&a[i], 1));
        }
        assert_int_equal(a[14], '4');           /* version 4 */
        assert_non_null(strchr("89ab", a[19])); /* RFC 4122 variant */
    }
}

static int cmp_id(const void *x, const void *y)
{
    return strcmp(x, y);
}

/* Ids come from a buffer refilled many times here: none repeats. */
static void test_uuid_unique(void **state)
{
    enum { N = 4096 };
    char(*ids)[37] = malloc(N * sizeof(*ids));

    (void)state;
    assert_non_null(ids);
    for (int i = 0; i < N; i++)
        ev_uuid(ids[i]);
    qsort(ids, N, sizeof(*ids), cmp_id);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}

static void test_traceparent_new(void **state)
{
    char tp[64][56];

    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(tp); i++) {
        ev_traceparent_new(tp[i]);
        assert_int_equal(strlen(tp[i]), 55);
        assert_true(ev_traceparent_valid(tp[i], 55));
        assert_memory_equal(tp[i], "00-", 3);
        assert_true(is_lower_hex(tp[i] + 3, 32) && tp[i][35] == '-');
        assert_true(is_lower_hex(tp[i] + 36, 16));
        assert_string_equal(tp[i] + 52, "-01");
        assert_true(strspn(tp[i] + 3, "0") < 32 && strspn(tp[i] + 36, "0") < 16);
        for (size_t j = 0; j < i; j++) {
            assert_memory_not_equal(tp[i] + 3, tp[j] + 3, 32);
            assert_memory_not_equal(tp[i] + 36, tp[j] + 36, 16);
        }
    }
}

static void test_traceparent_valid(void **state)
{
    static const char *const ok[] = {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                                     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                                     "00-00000000000000000000000000000001-0000000000000001-ff"};
    static const char *const bad[] = {
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero ids */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* long */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* separators */
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", /* not hex */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        "",
    };
    char cut[80];

    (void)state;
    for (size_t i = 0; i < ELEMENTSOF(ok); i++)
        assert_true(ev_traceparent_valid(ok[i], strlen(ok[i])));
    for (size_t i = 0; i < ELEMENTSOF(bad); i++)
        if (ev_traceparent_valid(bad[i], strlen(bad[i])))
            fail_msg("accepted invalid traceparent \"%s\"", bad[i]);
    assert_false(ev_traceparent_valid(NULL, 55));
    /* len bounds the header value; the bytes after it are not part of it. */
    snprintf(cut, sizeof(cut), "%s-extra", ok[0]);
    assert_true(ev_traceparent_valid(cut, 55));
    assert_false(ev_traceparent_valid(cut, 54));
    assert_false(ev_traceparent_valid(cut, strlen(cut)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_round_trip_order_created, free_owned),
        cmocka_unit_test_teardown(test_round_trip_replies, free_owned),
        cmocka_unit_test_teardown(test_reply_key_order, free_owned),
        cmocka_unit_test_teardown(test_decode_accepts, free_owned),
        cmocka_unit_test_teardown(test_deep_nesting, free_owned),
        cmocka_unit_test_teardown(test_not_a_json_object, free_owned),
        cmocka_unit_test_teardown(test_duplicate_keys, free_owned),
        cmocka_unit_test_teardown(test_missing_each_field, free_owned),
        cmocka_unit_test_teardown(test_wrong_type_each_field, free_owned),
        cmocka_unit_test_teardown(test_quantity_bounds, free_owned),
        cmocka_unit_test_teardown(test_amount_bounds, free_owned),
        cmocka_unit_test_teardown(test_overflow_in_unknown_field, free_owned),
        cmocka_unit_test_teardown(test_id_strings, free_owned),
        cmocka_unit_test_teardown(test_reason_strings, free_owned),
        cmocka_unit_test_teardown(test_error_buffer, free_owned),
        cmocka_unit_test_teardown(test_encoder_rejects_order, free_owned),
        cmocka_unit_test_teardown(test_encoder_rejects_replies, free_owned),
        cmocka_unit_test_teardown(test_type_names, free_owned),
        cmocka_unit_test_teardown(test_id_valid, free_owned),
        cmocka_unit_test_teardown(test_uuid, free_owned),
        cmocka_unit_test(test_uuid_unique),
        cmocka_unit_test_teardown(test_traceparent_new, free_owned),
        cmocka_unit_test_teardown(test_traceparent_valid, free_owned),
    };
    return cmocka_run_group_tests_name("event", tests, NULL, NULL);
}
