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
#include <sys/stat.h>
#include <unistd.h>

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

static void expect_mask(const char *in, const char *want)
{
    char out[512];
    cm_config_mask(in, out, sizeof(out));
    assert_string_equal(out, want);
}

/* Every form libpq accepts a password in. */
static void every_password_form_is_masked(void **state)
{
    (void)state;
    expect_mask("postgres://u:p%40ss@h1:5432,h2/db?sslmode=verify-full",
                "postgres://u:***@h1:5432,h2/db?sslmode=verify-full");
    expect_mask("postgresql://u@h/db?password=s3cret&sslmode=require",
                "postgresql://u@h/db?password=***&sslmode=require");
    expect_mask("postgresql:///db?host=/run/postgresql&sslpassword=k3y",
                "postgresql:///db?host=/run/postgresql&sslpassword=***");
    expect_mask("postgresql://h/db", "postgresql://h/db");
    expect_mask("host=db password = 's3 cr\\'et' dbname=orders",
                "host=db password = *** dbname=orders");
    expect_mask("password='' user=a", "password=*** user=a");
    expect_mask("  PASSWORD=x\\ y dbname=o", "  PASSWORD=*** dbname=o");
    expect_mask("sslpassword=k3y sslkey=/k.pem password=pw",
                "sslpassword=*** sslkey=/k.pem password=***");
    expect_mask("host=db dbname=orders", "host=db dbname=orders");
    expect_mask("dbname=orders", "dbname=orders");
    expect_mask("orders", "orders");
    expect_mask("", "");
    /* not conninfo: everything from "password" on is hidden */
    expect_mask("host=db garbage password s3cret", "host=db garbage ***");
    /* a URI as a value (libpq expands a dbname that is one) */
    expect_mask("dbname=postgresql://u:pw@h/db password=x",
                "dbname=postgresql://u:***@h/db password=***");
    /* libpq ends the credentials at an '@' before the first '/', so a raw
     * '?' or '#' in the password is still the password */
    expect_mask("postgresql://app:s3?cret@db:5432/orders", "postgresql://app:***@db:5432/orders");
    expect_mask("postgresql://app:a?b@db", "postgresql://app:***@db");
    expect_mask("postgresql://app:x?password=y@db/o?sslmode=require",
                "postgresql://app:***@db/o?sslmode=require");
    expect_mask("postgresql://app:p#w@db/o", "postgresql://app:***@db/o");
}

static void secret_names(void **state)
{
    static const char *const secret[] = {
        "KAFKA_SASL_PASSWORD",
        "sasl.password",
        "KAFKA_SSL_KEY_PASSWORD",
        "ssl.keystore.password",
        "KAFKA_SSL_KEY_PEM",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "KAFKA_SASL_OAUTHBEARER_CONFIG",
        "X_PASSPHRASE",
        "ssl.certificate.pem",
    };
    static const char *const plain[] = {
        "KAFKA_SASL_PASSWORD_FILE", "ssl.key.location",
        "KAFKA_SSL_CA_LOCATION",    "HTTP_TOKENS_FILE",
        "KAFKA_SASL_USERNAME",      "DATABASE_URL",
        "bootstrap.servers",        "sasl.oauthbearer.token.endpoint.url",
    };
    char out[64];
    (void)state;
    for (size_t i = 0; i < sizeof(secret) / sizeof(secret[0]); i++) {
        assert_true(cm_config_secret_name(secret[i]));
        cm_config_mask_value(secret[i], "s3cret-value", out, sizeof(out));
        assert_string_equal(out, "***");
    }
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        assert_false(cm_config_secret_name(plain[i]));
    cm_config_mask_value("DATABASE_URL", "host=h password=pw", out, sizeof(out));
    assert_string_equal(out, "host=h password=***");
    cm_config_mask_value("KAFKA_SASL_PASSWORD_FILE", "/run/kafka-password", out, sizeof(out));
    assert_string_equal(out, "/run/kafka-password");
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
    assert_int_equal(cm_config_kafka_each(collect, &seen, NULL, 0), 0);
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
    assert_int_equal(cm_config_kafka_each(record_visit, &v, NULL, 0), 0);
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
    assert_int_equal(cm_config_kafka_each(record_visit, &v, NULL, 0), 0);
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

/* ---- KAFKA_<NAME>_FILE */

static char tmpdir[64];

static const char *tmpfile_with(const char *name, const void *data, size_t len, int mode)
{
    static char path[128];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    chmod(path, (mode_t)mode);
    return path;
}

static int file_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_config.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return clear_kafka_env(NULL);
}

static int file_teardown(void **state)
{
    char cmd[128];
    (void)state;
    unsetenv("KAFKA_SASL_PASSWORD");
    unsetenv("KAFKA_SASL_PASSWORD_FILE");
    unsetenv("KAFKA_SSL_KEY_PASSWORD_FILE");
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
    return clear_kafka_env(NULL);
}

typedef struct {
    char prop[64], value[128], var[64];
    int n;
} seen_prop;

static int record_prop(void *ud, const char *var, const char *prop, const char *value)
{
    seen_prop *p = ud;
    if (strcmp(prop, "sasl.password") == 0) {
        snprintf(p->var, sizeof(p->var), "%s", var);
        snprintf(p->prop, sizeof(p->prop), "%s", prop);
        snprintf(p->value, sizeof(p->value), "%s", value);
        p->n++;
    }
    return 0;
}

static void file_sets_the_property_to_its_contents(void **state)
{
    seen_prop p = {0};
    char err[256] = "", out[256];
    (void)state;
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("pw", "Fz9-scram-pw\n", 13, 0400), 1);
    assert_int_equal(cm_config_kafka_each(record_prop, &p, err, sizeof(err)), 0);
    assert_int_equal(p.n, 1);
    assert_string_equal(p.var, "KAFKA_SASL_PASSWORD_FILE");
    assert_string_equal(p.value, "Fz9-scram-pw"); /* trailing newline stripped */
    /* the value is now known as a secret: redacted from free text */
    cm_config_redact("auth failed for pw Fz9-scram-pw!", out, sizeof(out));
    assert_string_equal(out, "auth failed for pw ***!");
    /* and librdkafka accepts it (the startup check) */
    assert_int_equal(cm_kafka_check_env(err, sizeof(err)), 0);
    /* CRLF too, and a newline inside stays */
    memset(&p, 0, sizeof(p));
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("pw2", "a\nb\r\n\n", 6, 0600), 1);
    assert_int_equal(cm_config_kafka_each(record_prop, &p, err, sizeof(err)), 0);
    assert_string_equal(p.value, "a\nb");
}

static void expect_file_error(const char *want1, const char *want2)
{
    char err[512] = "";
    seen_prop p = {0};
    assert_int_equal(cm_config_kafka_each(record_prop, &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, want1));
    if (want2)
        assert_non_null(strstr(err, want2));
    /* the daemons' startup check fails the same way (exit 78) */
    err[0] = '\0';
    assert_int_equal(cm_kafka_check_env(err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, want1));
}

static void file_and_variable_together_is_an_error(void **state)
{
    (void)state;
    setenv("KAFKA_SASL_PASSWORD", "x", 1);
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("pw", "y", 1, 0600), 1);
    expect_file_error("KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE", "only one");
}

static void bad_files_are_refused_naming_the_variable(void **state)
{
    static char big[CM_CONFIG_FILE_MAX + 1];
    (void)state;
    setenv("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/kafka-password", 1);
    expect_file_error("KAFKA_SASL_PASSWORD_FILE=\"/nonexistent/kafka-password\"", "No such file");
    if (geteuid() != 0) { /* root reads a mode 000 file anyway */
        setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("locked", "pw", 2, 0000), 1);
        expect_file_error("KAFKA_SASL_PASSWORD_FILE", "Permission denied");
    }
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpdir, 1);
    expect_file_error("KAFKA_SASL_PASSWORD_FILE", "not a regular file");
    memset(big, 'x', sizeof(big));
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("big", big, sizeof(big), 0600), 1);
    expect_file_error("KAFKA_SASL_PASSWORD_FILE", "larger than 65536 bytes");
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("empty", "\n", 1, 0600), 1);
    expect_file_error("KAFKA_SASL_PASSWORD_FILE", "empty");
    /* exactly the limit is fine */
    setenv("KAFKA_SASL_PASSWORD_FILE", tmpfile_with("limit", big, CM_CONFIG_FILE_MAX, 0600), 1);
    {
        char err[256] = "";
        seen_prop p = {0};
        assert_int_equal(cm_config_kafka_each(record_prop, &p, err, sizeof(err)), 0);
        assert_int_equal(p.n, 1);
    }
}

static void redact_hides_known_secrets_only(void **state)
{
    char out[256];
    (void)state;
    cm_config_secret_add("abc"); /* too short to redact in free text */
    cm_config_secret_add("0123456789-secret");
    cm_config_secret_add("0123456789-secret"); /* once is enough */
    cm_config_redact("abc 0123456789-secret0123456789-secret x", out, sizeof(out));
    assert_string_equal(out, "abc ****** x");
    cm_config_redact("nothing here", out, sizeof(out));
    assert_string_equal(out, "nothing here");
    cm_config_redact("0123456789-secret", out, 3); /* truncated, terminated */
    assert_string_equal(out, "**");
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
        cmocka_unit_test(every_password_form_is_masked),
        cmocka_unit_test(secret_names),
        cmocka_unit_test(redact_hides_known_secrets_only),
        cmocka_unit_test_setup_teardown(file_sets_the_property_to_its_contents, file_setup,
                                        file_teardown),
        cmocka_unit_test_setup_teardown(file_and_variable_together_is_an_error, file_setup,
                                        file_teardown),
        cmocka_unit_test_setup_teardown(bad_files_are_refused_naming_the_variable, file_setup,
                                        file_teardown),
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
