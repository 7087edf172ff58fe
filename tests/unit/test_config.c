/*
 * test_config.c - the declarative configuration table: defaults, parsing of
 * every type, range checks, error messages naming the variable, masking of
 * secrets, the KAFKA_* pass-through naming, and the Kafka launcher and dev
 * stack variables that the pass-through ignores.
 */
#include "cm_config.h"
#include "cm_kafka.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
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

/* Kafka's launcher (bin/kafka-run-class.sh) and our deploy/kafka scripts
 * read these; a host that runs either has them set. */
static const char *const launcher_and_dev_stack[] = {
    "KAFKA_HEAP_OPTS",      "KAFKA_OPTS",         "KAFKA_JVM_PERFORMANCE_OPTS",
    "KAFKA_GC_LOG_OPTS",    "KAFKA_JMX_OPTS",     "KAFKA_LOG4J_OPTS",
    "KAFKA_LOG4J_CMD_OPTS", "KAFKA_DEBUG",        "KAFKA_MODE",
    "KAFKA_VERSION",        "KAFKA_LIBS_DIR",     "KAFKA_EXTRA_PROPERTIES",
    "KAFKA_START_TIMEOUT",  "KAFKA_STOP_TIMEOUT",
};
#define NLAUNCHER (sizeof(launcher_and_dev_stack) / sizeof(launcher_and_dev_stack[0]))

typedef struct {
    char seen[32][64]; /* variables visited by cm_config_kafka_each */
    int nseen;
    char ignored[32][64]; /* reported by cm_config_kafka_each_ignored */
    int nignored;
} visits;

static int record_visit(void *ud, const char *var, const char *prop, const char *value)
{
    visits *v = ud;
    (void)prop;
    (void)value;
    if (strncmp(var, "KAFKA_", 6) == 0 && v->nseen < 32)
        snprintf(v->seen[v->nseen++], sizeof(v->seen[0]), "%s", var);
    return 0;
}

static void record_ignored(void *ud, const char *var, const char *owner)
{
    visits *v = ud;
    assert_non_null(owner);
    assert_true(strcmp(owner, "kafka launcher") == 0 || strcmp(owner, "dev stack") == 0);
    if (v->nignored < 32)
        snprintf(v->ignored[v->nignored++], sizeof(v->ignored[0]), "%s", var);
}

static int count(char (*names)[64], int n, const char *var)
{
    int c = 0;
    for (int i = 0; i < n; i++)
        c += strcmp(names[i], var) == 0;
    return c;
}

static void set_launcher_env(void)
{
    for (size_t i = 0; i < NLAUNCHER; i++)
        setenv(launcher_and_dev_stack[i], "-Xmx1g -Dsome.option=1", 1);
}

static int clear_kafka_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < NLAUNCHER; i++)
        unsetenv(launcher_and_dev_stack[i]);
    unsetenv("KAFKA_LINGER_MS");
    unsetenv("KAFKA_NO_SUCH_PROPERTY");
    unsetenv("KAFKA_HEAP_OPTS_EXTRA");
    unsetenv("KAFKA_ACKS");
    return 0;
}

static void launcher_variables_are_ignored(void **state)
{
    visits v = {0};
    (void)state;
    set_launcher_env();
    setenv("KAFKA_LINGER_MS", "5", 1);
    assert_int_equal(cm_config_kafka_each(record_visit, &v), 0);
    cm_config_kafka_each_ignored(record_ignored, &v);
    for (size_t i = 0; i < NLAUNCHER; i++) {
        const char *var = launcher_and_dev_stack[i];
        assert_non_null(cm_config_kafka_ignored(var));
        /* never handed to librdkafka, reported exactly once */
        assert_int_equal(count(v.seen, v.nseen, var), 0);
        assert_int_equal(count(v.ignored, v.nignored, var), 1);
    }
    /* a real property still passes through, and is not reported as ignored */
    assert_int_equal(count(v.seen, v.nseen, "KAFKA_LINGER_MS"), 1);
    assert_int_equal(count(v.ignored, v.nignored, "KAFKA_LINGER_MS"), 0);
    assert_null(cm_config_kafka_ignored("KAFKA_LINGER_MS"));
}

static void only_exact_names_are_ignored(void **state)
{
    visits v = {0};
    (void)state;
    setenv("KAFKA_HEAP_OPTS_EXTRA", "1", 1);
    setenv("KAFKA_NO_SUCH_PROPERTY", "1", 1);
    assert_int_equal(cm_config_kafka_each(record_visit, &v), 0);
    assert_int_equal(count(v.seen, v.nseen, "KAFKA_HEAP_OPTS_EXTRA"), 1);
    assert_int_equal(count(v.seen, v.nseen, "KAFKA_NO_SUCH_PROPERTY"), 1);
    assert_null(cm_config_kafka_ignored("KAFKA_HEAP"));
    assert_null(cm_config_kafka_ignored("kafka_heap_opts"));
}

static void startup_check_accepts_launcher_variables(void **state)
{
    char err[512] = "";
    (void)state;
    set_launcher_env();
    setenv("KAFKA_LINGER_MS", "5", 1);
    assert_int_equal(cm_kafka_check_env(err, sizeof(err)), 0);
}

static void startup_check_names_an_unknown_variable(void **state)
{
    char err[512] = "";
    (void)state;
    set_launcher_env();
    setenv("KAFKA_NO_SUCH_PROPERTY", "1", 1);
    assert_int_equal(cm_kafka_check_env(err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "KAFKA_NO_SUCH_PROPERTY"));
    assert_non_null(strstr(err, "no.such.property"));
}

static void startup_check_names_an_invalid_value(void **state)
{
    char err[512] = "";
    (void)state;
    setenv("KAFKA_ACKS", "banana", 1);
    assert_int_equal(cm_kafka_check_env(err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "KAFKA_ACKS"));
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
        cmocka_unit_test_setup_teardown(launcher_variables_are_ignored, clear_kafka_env,
                                        clear_kafka_env),
        cmocka_unit_test_setup_teardown(only_exact_names_are_ignored, clear_kafka_env,
                                        clear_kafka_env),
        cmocka_unit_test_setup_teardown(startup_check_accepts_launcher_variables, clear_kafka_env,
                                        clear_kafka_env),
        cmocka_unit_test_setup_teardown(startup_check_names_an_unknown_variable, clear_kafka_env,
                                        clear_kafka_env),
        cmocka_unit_test_setup_teardown(startup_check_names_an_invalid_value, clear_kafka_env,
                                        clear_kafka_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
