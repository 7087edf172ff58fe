/*
 * test_key.c - the Idempotency-Key fingerprint (os_key): requests that
 * differ in any field, however a separator falls inside the fields, never
 * share a fingerprint; the same request always has the same one; keys stored
 * before the encoding changed ("v1|" text) still match their own request.
 */
#include "os_key.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

typedef struct {
    const char *customer, *sku;
    int32_t quantity;
    int64_t amount;
} request;

static void fp(const request *r, char out[OS_FINGERPRINT_MAX])
{
    assert_int_equal(os_fingerprint(r->customer, r->sku, r->quantity, r->amount, out), 0);
}

static bool matches(const char *stored, const request *r)
{
    char f[OS_FINGERPRINT_MAX];
    fp(r, f);
    return os_fingerprint_matches(stored, f, r->customer, r->sku, r->quantity, r->amount);
}

/* The two bodies of the issue, and others where a field boundary moves. */
static void shifted_boundaries_differ(void **state)
{
    static const request pairs[][2] = {
        {{"a|b", "c", 1, 100}, {"a", "b|c", 1, 100}},
        {{"a:1:b", "c", 1, 100}, {"a", "1:b:c", 1, 100}},
        {{"a", "b:1", 1, 100}, {"a", "b", 11, 100}},
        {{"a", "b", 1, 1}, {"a", "b", 11, 1}},
        {{"a|b|1", "2", 3, 4}, {"a", "b", 1, 234}},
    };
    char f1[OS_FINGERPRINT_MAX], f2[OS_FINGERPRINT_MAX];
    (void)state;

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        fp(&pairs[i][0], f1);
        fp(&pairs[i][1], f2);
        if (strcmp(f1, f2) == 0)
            fail_msg("pair %zu: both requests have fingerprint %s", i, f1);
        assert_false(matches(f1, &pairs[i][1]));
        assert_false(matches(f2, &pairs[i][0]));
        assert_true(matches(f1, &pairs[i][0]));
    }
}

static void same_request_same_fingerprint(void **state)
{
    static const request r = {"c-1", "s-1", 3, 1500};
    char f1[OS_FINGERPRINT_MAX], f2[OS_FINGERPRINT_MAX];
    (void)state;

    fp(&r, f1);
    fp(&r, f2);
    assert_string_equal(f1, f2);
    assert_true(matches(f1, &r));
}

/* The longest ids and numbers fit. */
static void longest_request_fits(void **state)
{
    char id[65], f[OS_FINGERPRINT_MAX];
    (void)state;

    memset(id, '~', 64);
    id[64] = '\0';
    assert_int_equal(os_fingerprint(id, id, INT32_MIN, INT64_MIN, f), 0);
}

/* A fingerprint stored by an older version ("customer|sku|quantity|amount",
 * marked "v1|" by the migration) matches its own request only. */
static void stored_v1_fingerprints_still_match(void **state)
{
    static const request r = {"c-1", "s-1", 3, 1500};
    static const request other = {"c-1", "s-1", 3, 1501};
    (void)state;

    assert_true(matches("v1|c-1|s-1|3|1500", &r));
    assert_false(matches("v1|c-1|s-1|3|1500", &other));
    assert_false(matches("c-1|s-1|3|1500", &r)); /* unmarked: not a v1 text */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shifted_boundaries_differ),
        cmocka_unit_test(same_request_same_fingerprint),
        cmocka_unit_test(longest_request_fits),
        cmocka_unit_test(stored_v1_fingerprints_still_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
