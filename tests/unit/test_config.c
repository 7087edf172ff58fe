/*
 * test_config.c - the declarative configuration table: defaults, parsing of
 * every type, range checks, error messages naming the variable, masking of
 * secrets, and the KAFKA_* pass-through naming.
 */
#include "cm_config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef struct {
    const char *name;
    long long port;
    bool verbose;
    long long wait_ms;
} cfg;

static const cm_cfg_item items[] = {
    {"T_NAME", CM_CFG_STRING, "svc", 0, 0, offsetof(cfg, name), false, "name"},
    {"T_PORT", CM_CFG_INT, "8080", 1, 65535, offsetof(cfg, port), false, "port"},
    {"T_VERBOSE", CM_CFG_BOOL, "false", 0, 0, offsetof(cfg, verbose), false, "verbose"},
    {"T_WAIT", CM_CFG_DURATION, "2s", 0, 60000, offsetof(cfg, wait_ms), false, "wait"},
};
#define N (sizeof(items) / sizeof(items[0]))

static int clear_env(void **state)
{
    (void)state;
    unsetenv("T_NAME");
    unsetenv("T_PORT");
    unsetenv("T_VERBOSE");
    unsetenv("T_WAIT");
    return 0;
}

static void defaults_apply(void **state)
{
    cfg c = {0};
    char err[256];
    (void)state;
    assert_int_equal(cm_config_load(items, N, &c, err, sizeof(err)), 0);
    assert_string_equal(c.name, "svc");
    assert_int_equal(c.port, 8080);
    assert_false(c.verbose);
    assert_int_equal(c.wait_ms, 2000);
}

static void environment_overrides(void **state)
{
    cfg c = {0};
    char err[256];
    (void)state;
    setenv("T_NAME", "other", 1);
    setenv("T_PORT", "9090", 1);
    setenv("T_VERBOSE", "yes", 1);
    setenv("T_WAIT", "250ms", 1);
    assert_int_equal(cm_config_load(items, N, &c, err, sizeof(err)), 0);
    assert_string_equal(c.name, "other");
    assert_int_equal(c.port, 9090);
    assert_true(c.verbose);
    assert_int_equal(c.wait_ms, 250);
    setenv("T_WAIT", "1m", 1);
    assert_int_equal(cm_config_load(items, N, &c, err, sizeof(err)), 0);
    assert_int_equal(c.wait_ms, 60000);
}

static void expect_bad(const char *var, const char *value)
{
    cfg c = {0};
    char err[256] = "";
    clear_env(NULL);
    setenv(var, value, 1);
    assert_int_equal(cm_config_load(items, N, &c, err, sizeof(err)), -22);
    /* The message names the variable and repeats the bad value. */
    assert_non_null(strstr(err, var));
    assert_non_null(strstr(err, value));
}

static void bad_values_name_the_variable(void **state)
{
    (void)state;
    expect_bad("T_PORT", "http");
    expect_bad("T_PORT", "0");
    expect_bad("T_PORT", "65536");
    expect_bad("T_PORT", "80x");
    expect_bad("T_PORT", " 80");
    expect_bad("T_PORT", "99999999999999999999999");
    expect_bad("T_VERBOSE", "maybe");
    expect_bad("T_WAIT", "2 s");
    expect_bad("T_WAIT", "-1s");
    expect_bad("T_WAIT", "2d");
    expect_bad("T_WAIT", "61s");
}

static void required_variable_missing(void **state)
{
    static const cm_cfg_item req[] = {
        {"T_NAME", CM_CFG_STRING, NULL, 0, 0, offsetof(cfg, name), false, "the name"},
    };
    cfg c = {0};
    char err[256] = "";
    (void)state;
    assert_int_equal(cm_config_load(req, 1, &c, err, sizeof(err)), -22);
    assert_non_null(strstr(err, "T_NAME"));
}

static void secrets_are_masked(void **state)
{
    char out[256];
    (void)state;
    cm_config_mask("postgresql://app:s3cret@db:5432/orders", out, sizeof(out));
    assert_string_equal(out, "postgresql://app:***@db:5432/orders");
    cm_config_mask("postgresql://app@db/orders", out, sizeof(out));
    assert_string_equal(out, "postgresql://app@db/orders");
    cm_config_mask("host=db password=s3cret dbname=orders", out, sizeof(out));
    assert_string_equal(out, "host=db password=*** dbname=orders");
}

static int collect(void *ud, const char *var, const char *prop, const char *value)
{
    if (strcmp(var, "KAFKA_LINGER_MS") == 0) {
        assert_string_equal(prop, "linger.ms");
        assert_string_equal(value, "5");
        (*(int *)ud)++;
    }
    return 0;
}

static void kafka_pass_through(void **state)
{
    int seen = 0;
    (void)state;
    setenv("KAFKA_LINGER_MS", "5", 1);
    assert_int_equal(cm_config_kafka_each(collect, &seen), 0);
    assert_int_equal(seen, 1);
    unsetenv("KAFKA_LINGER_MS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(defaults_apply, clear_env),
        cmocka_unit_test_setup(environment_overrides, clear_env),
        cmocka_unit_test_setup(bad_values_name_the_variable, clear_env),
        cmocka_unit_test_setup(required_variable_missing, clear_env),
        cmocka_unit_test(secrets_are_masked),
        cmocka_unit_test(kafka_pass_through),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
