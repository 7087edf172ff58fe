/*
 * test_cli.c - the tools' shared parsing (tools/cli/tl_cli): durations as
 * "orderctl orders stuck --older-than" takes them, and their bounds.
 */
#include "tl_cli.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static int64_t secs(const char *s)
{
    int64_t v = -1;
    assert_int_equal(tl_parse_duration(s, INT64_MAX, &v), 0);
    return v;
}

static void durations_with_units(void **state)
{
    (void)state;
    assert_int_equal(secs("0s"), 0);
    assert_int_equal(secs("30s"), 30);
    assert_int_equal(secs("5m"), 300);
    assert_int_equal(secs("1h"), 3600);
    assert_int_equal(secs("2d"), 172800);
    assert_int_equal(secs("90"), 90);
}

static void bad_durations_are_refused(void **state)
{
    static const char *const bad[] = {
        "",    "s",   "m5",   "5x",  "-1s", "+1s",   " 5m",
        "5m ", "5 m", "1.5h", "5ms", "5M",  "0x10s", "99999999999999999999s"};
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t v = 42;
        assert_int_equal(tl_parse_duration(bad[i], INT64_MAX, &v), -EINVAL);
        assert_int_equal(v, 42); /* untouched on failure */
    }
    assert_int_equal(tl_parse_duration(NULL, INT64_MAX, &(int64_t){0}), -EINVAL);
}

static void the_bound_applies_after_the_unit(void **state)
{
    int64_t v;
    (void)state;
    assert_int_equal(tl_parse_duration("2h", 7200, &v), 0);
    assert_int_equal(v, 7200);
    assert_int_equal(tl_parse_duration("121m", 7200, &v), -EINVAL);
    assert_int_equal(tl_parse_duration("7201", 7200, &v), -EINVAL);
    /* no overflow: a huge count of days is refused, not wrapped */
    assert_int_equal(tl_parse_duration("106751991167301d", INT64_MAX, &v), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(durations_with_units),
        cmocka_unit_test(bad_durations_are_refused),
        cmocka_unit_test(the_bound_applies_after_the_unit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
