/*
 * test_auth.c - the token table (cm_auth): file parsing and its errors,
 * permissions, lookup by hash and scope, the Bearer header, token generation
 * and reloads racing with lookups.
 */
#include "cm_auth.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char hash_a[65], hash_b[65];

static int setup(void **state)
{
    (void)state;
    assert_int_equal(cm_auth_hash_hex("secret-a", 8, hash_a), 0);
    assert_int_equal(cm_auth_hash_hex("secret-b", 8, hash_b), 0);
    return 0;
}

static void test_hash_is_sha256(void **state)
{
    char h[65];
    (void)state;
    /* The SHA-256 of "abc" (FIPS 180-2, appendix B.1). */
    assert_int_equal(cm_auth_hash_hex("abc", 3, h), 0);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static cm_auth *load(const char *text, int want, size_t want_count, const char *want_err)
{
    cm_auth *a;
    size_t n = 999;
    char err[512] = "";

    assert_int_equal(cm_auth_new(&a), 0);
    int r = cm_auth_load_text(a, "tokens", text, &n, err, sizeof(err));
    if (want == 0) {
        assert_int_equal(r, 0);
        assert_int_equal(n, want_count);
    } else {
        assert_int_equal(r, want);
        if (!strstr(err, want_err))
            fail_msg("error \"%s\" does not contain \"%s\"", err, want_err);
    }
    return a;
}

static void test_lookup_by_hash_and_scope(void **state)
{
    char text[512], name[64] = "";
    (void)state;
    snprintf(text, sizeof(text),
             "# a comment\n\n  %s  app\torders:write,orders:read\r\n%s admin payments:admin\n",
             hash_a, hash_b);
    cm_auth *a = load(text, 0, 2, NULL);

    assert_int_equal(cm_auth_check(a, "secret-a", 8, "orders:write", name, sizeof(name)),
                     CM_AUTH_OK);
    assert_string_equal(name, "app");
    assert_int_equal(cm_auth_check(a, "secret-a", 8, "orders:read", name, sizeof(name)),
                     CM_AUTH_OK);
    assert_int_equal(cm_auth_check(a, "secret-a", 8, "payments:admin", name, sizeof(name)),
                     CM_AUTH_FORBIDDEN);
    assert_int_equal(cm_auth_check(a, "secret-b", 8, "payments:admin", name, sizeof(name)),
                     CM_AUTH_OK);
    assert_string_equal(name, "admin");
    /* A prefix of a scope is not the scope. */
    assert_int_equal(cm_auth_check(a, "secret-b", 8, "payments:adm", name, sizeof(name)),
                     CM_AUTH_FORBIDDEN);
    /* Unknown tokens, a prefix of a known one, the hash itself, nothing. */
    assert_int_equal(cm_auth_check(a, "secret-c", 8, NULL, name, sizeof(name)), CM_AUTH_UNKNOWN);
    assert_int_equal(cm_auth_check(a, "secret-", 7, NULL, name, sizeof(name)), CM_AUTH_UNKNOWN);
    assert_int_equal(cm_auth_check(a, hash_a, 64, NULL, name, sizeof(name)), CM_AUTH_UNKNOWN);
    assert_int_equal(cm_auth_check(a, "", 0, NULL, name, sizeof(name)), CM_AUTH_UNKNOWN);
    assert_int_equal(cm_auth_check(a, NULL, 0, NULL, name, sizeof(name)), CM_AUTH_UNKNOWN);
    cm_auth_free(a);
}

static void test_empty_table_knows_nobody(void **state)
{
    cm_auth *a = load("# no tokens yet\n", 0, 0, NULL);
    (void)state;
    assert_int_equal(cm_auth_check(a, "secret-a", 8, NULL, NULL, 0), CM_AUTH_UNKNOWN);
    cm_auth_free(a);
}

static void test_malformed_lines_name_file_and_line(void **state)
{
    /* Each file: a format taking hash_a and hash_b (%1$s, %2$s), and a
     * part of the error it must give. */
    static const struct {
        const char *fmt, *err;
    } cases[] = {
        {"\n\nnothex app orders:write\n", "tokens:3: first field"},
        {"%1$.63sg app orders:write\n", "tokens:1: first field is not hexadecimal"},
        {"%1$s\n", "tokens:1: missing token name"},
        {"%1$s app\n", "tokens:1: missing scopes"},
        {"%1$s a/b orders:write\n", "tokens:1: token name"},
        {"%1$s app Orders:write\n", "tokens:1: invalid scope \"Orders:write\""},
        {"%1$s app orders:write,\n", "tokens:1: invalid scope \"\""},
        {"%1$s app orders\n", "invalid scope \"orders\""},
        {"%1$s app orders:write, orders:read\n", "tokens:1: invalid scope"},
        {"%1$s app orders:write extra\n", "tokens:1: unexpected fourth field"},
        {"%1$s app orders:write\n%1$s app2 orders:read\n",
         "tokens:2: the same token hash as token \"app\""},
        {"%1$s app orders:write\n%2$s app orders:read\n",
         "tokens:2: token name \"app\" used twice"},
    };
    char text[512];
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(text, sizeof(text), cases[i].fmt, hash_a, hash_b);
#pragma GCC diagnostic pop
        cm_auth_free(load(text, -EINVAL, 0, cases[i].err));
    }
}

static void test_bad_reload_keeps_the_old_table(void **state)
{
    char text[512], err[512];
    size_t n = 0;
    (void)state;
    snprintf(text, sizeof(text), "%s app orders:write\n", hash_a);
    cm_auth *a = load(text, 0, 1, NULL);

    snprintf(text, sizeof(text), "%s admin payments:admin\nbroken\n", hash_b);
    assert_int_equal(cm_auth_load_text(a, "tokens", text, &n, err, sizeof(err)), -EINVAL);
    assert_int_equal(cm_auth_check(a, "secret-a", 8, "orders:write", NULL, 0), CM_AUTH_OK);
    assert_int_equal(cm_auth_check(a, "secret-b", 8, NULL, NULL, 0), CM_AUTH_UNKNOWN);
    /* A good one replaces it whole: the old token is revoked. */
    snprintf(text, sizeof(text), "%s admin payments:admin\n", hash_b);
    assert_int_equal(cm_auth_load_text(a, "tokens", text, &n, err, sizeof(err)), 0);
    assert_int_equal(cm_auth_check(a, "secret-a", 8, NULL, NULL, 0), CM_AUTH_UNKNOWN);
    assert_int_equal(cm_auth_check(a, "secret-b", 8, "payments:admin", NULL, 0), CM_AUTH_OK);
    cm_auth_free(a);
}

static void test_file_permissions_and_errors(void **state)
{
    char path[] = "/tmp/test_auth.XXXXXX", err[512], line[128];
    size_t n = 0;
    cm_auth *a;
    int fd = mkstemp(path);
    (void)state;

    assert_true(fd >= 0);
    snprintf(line, sizeof(line), "%s app orders:write\n", hash_a);
    assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
    close(fd);
    assert_int_equal(cm_auth_new(&a), 0);

    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(cm_auth_load(a, path, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 1);
    assert_int_equal(cm_auth_check(a, "secret-a", 8, "orders:write", NULL, 0), CM_AUTH_OK);

    assert_int_equal(chmod(path, 0620), 0);
    assert_int_equal(cm_auth_load(a, path, &n, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "writable by group or others"));
    assert_int_equal(chmod(path, 0602), 0);
    assert_int_equal(cm_auth_load(a, path, &n, err, sizeof(err)), -EPERM);
    /* The table from before is still in force. */
    assert_int_equal(cm_auth_check(a, "secret-a", 8, "orders:write", NULL, 0), CM_AUTH_OK);

    unlink(path);
    assert_int_equal(cm_auth_load(a, path, &n, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, path));
    assert_int_equal(cm_auth_load(a, "/tmp", &n, err, sizeof(err)), -EINVAL);
    cm_auth_free(a);
}

static void test_bearer_header(void **state)
{
    const char *t;
    size_t n;
    (void)state;

    assert_true(cm_auth_parse_bearer("Bearer ot_abc-_", &t, &n));
    assert_int_equal(n, 8);
    assert_memory_equal(t, "ot_abc-_", 8);
    assert_true(cm_auth_parse_bearer("bearer abc==", &t, &n)); /* scheme: any case */
    assert_int_equal(n, 5);
    assert_true(cm_auth_parse_bearer("BEARER   abc  ", &t, &n));
    assert_int_equal(n, 3);
    assert_false(cm_auth_parse_bearer(NULL, &t, &n));
    assert_false(cm_auth_parse_bearer("", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearer", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearer ", &t, &n));
    assert_false(cm_auth_parse_bearer("Basic YWxhZGRpbjpvcGVu", &t, &n));
    assert_false(cm_auth_parse_bearer("Token abc", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearerabc", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearer abc def", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearer a=b", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearer abc, Bearer def", &t, &n));
    assert_false(cm_auth_parse_bearer("Bearer ab\"c", &t, &n));
}

static void test_token_new(void **state)
{
    char t1[CM_AUTH_TOKEN_LEN], t2[CM_AUTH_TOKEN_LEN];
    (void)state;

    assert_int_equal(cm_auth_token_new(t1), 0);
    assert_int_equal(cm_auth_token_new(t2), 0);
    assert_int_equal(strlen(t1), 46);
    assert_memory_equal(t1, "ot_", 3);
    assert_string_not_equal(t1, t2);
    for (size_t i = 3; i < strlen(t1); i++)
        assert_non_null(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", t1[i]));
    /* What it makes is what the header parser takes. */
    const char *t;
    size_t n;
    char hdr[64];
    snprintf(hdr, sizeof(hdr), "Bearer %s", t1);
    assert_true(cm_auth_parse_bearer(hdr, &t, &n));
    assert_int_equal(n, 46);
}

static void test_names_and_scopes(void **state)
{
    (void)state;
    assert_true(cm_auth_scope_valid("orders:write", 12));
    assert_true(cm_auth_scope_valid("metrics:read", 12));
    assert_false(cm_auth_scope_valid(":write", 6));
    assert_false(cm_auth_scope_valid("orders:", 7));
    assert_false(cm_auth_scope_valid("orders write", 12));
    assert_true(cm_auth_name_valid("ci-bench_1.a", 12));
    assert_false(cm_auth_name_valid("a b", 3));
    assert_false(cm_auth_name_valid("", 0));
}

/* Lookups on several threads while the table is swapped: each sees the old
 * table or the new one, never neither. */
typedef struct {
    cm_auth *a;
    atomic_bool stop;
    atomic_int bad;
} race;

static void *reader(void *arg)
{
    race *r = arg;
    while (!atomic_load(&r->stop)) {
        bool ka = cm_auth_check(r->a, "secret-a", 8, NULL, NULL, 0) == CM_AUTH_OK;
        bool kb = cm_auth_check(r->a, "secret-b", 8, NULL, NULL, 0) == CM_AUTH_OK;
        /* Both tables hold "keep"; one holds a, the other b. */
        if (cm_auth_check(r->a, "keep", 4, "orders:read", NULL, 0) != CM_AUTH_OK)
            atomic_fetch_add(&r->bad, 1);
        (void)ka;
        (void)kb;
    }
    return NULL;
}

static void test_reload_while_reading(void **state)
{
    char keep[65], t1[256], t2[256], err[256];
    pthread_t th[3];
    race r = {0};
    size_t n;
    (void)state;

    assert_int_equal(cm_auth_hash_hex("keep", 4, keep), 0);
    snprintf(t1, sizeof(t1), "%s keep orders:read\n%s a orders:read\n", keep, hash_a);
    snprintf(t2, sizeof(t2), "%s b orders:read\n%s keep orders:read\n", hash_b, keep);
    assert_int_equal(cm_auth_new(&r.a), 0);
    assert_int_equal(cm_auth_load_text(r.a, "t", t1, &n, err, sizeof(err)), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &r), 0);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(cm_auth_load_text(r.a, "t", i % 2 ? t1 : t2, &n, err, sizeof(err)), 0);
    atomic_store(&r.stop, true);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&r.bad), 0);
    cm_auth_free(r.a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_is_sha256),
        cmocka_unit_test(test_lookup_by_hash_and_scope),
        cmocka_unit_test(test_empty_table_knows_nobody),
        cmocka_unit_test(test_malformed_lines_name_file_and_line),
        cmocka_unit_test(test_bad_reload_keeps_the_old_table),
        cmocka_unit_test(test_file_permissions_and_errors),
        cmocka_unit_test(test_bearer_header),
        cmocka_unit_test(test_token_new),
        cmocka_unit_test(test_names_and_scopes),
        cmocka_unit_test(test_reload_while_reading),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
