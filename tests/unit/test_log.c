/*
 * test_log.c - held log lines (cm_log_hold): stderr is a SOCK_SEQPACKET
 * socket for the test, so every write(2) arrives as one record and the test
 * sees how many writes the lines took. Held lines are written only on flush,
 * release or a full buffer, in chunks of whole lines of at most PIPE_BUF
 * bytes; warnings are never held and keep the order; a dropped batch writes
 * nothing; other threads are not held.
 */
#include "cm_log.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

/* stderr redirected to one end of a seqpacket pair; the records read back. */
typedef struct {
    int saved, peer;
    char *rec[512];
    size_t len[512];
    int n;
} capture;

static void capture_start(capture *c)
{
    int sv[2];

    memset(c, 0, sizeof(*c));
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
    int big = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    c->saved = dup(STDERR_FILENO);
    assert_true(c->saved >= 0);
    assert_int_equal(dup2(sv[0], STDERR_FILENO), STDERR_FILENO);
    close(sv[0]);
    c->peer = sv[1];
}

/* Reads the records written so far (without waiting). */
static void capture_read(capture *c)
{
    char buf[PIPE_BUF * 4];

    for (;;) {
        ssize_t r = recv(c->peer, buf, sizeof(buf), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        assert_true(c->n < 512);
        c->rec[c->n] = malloc((size_t)r + 1);
        memcpy(c->rec[c->n], buf, (size_t)r);
        c->rec[c->n][r] = '\0';
        c->len[c->n++] = (size_t)r;
    }
}

static void capture_end(capture *c)
{
    capture_read(c);
    assert_int_equal(dup2(c->saved, STDERR_FILENO), STDERR_FILENO);
    close(c->saved);
    close(c->peer);
}

static void capture_free(capture *c)
{
    for (int i = 0; i < c->n; i++)
        free(c->rec[i]);
}

/* Every record is whole lines of at most PIPE_BUF bytes; returns the lines
 * ("msg=<k>" of each, in order) as numbers in out, and their count. */
static int lines_of(const capture *c, int *out, int cap)
{
    int k = 0;

    for (int i = 0; i < c->n; i++) {
        assert_true(c->len[i] <= PIPE_BUF);
        assert_int_equal(c->rec[i][c->len[i] - 1], '\n');
        for (const char *p = c->rec[i]; (p = strstr(p, "msg=")); p += 4) {
            assert_true(k < cap);
            out[k++] = atoi(p + 4);
        }
    }
    return k;
}

static int setup(void **state)
{
    (void)state;
    cm_log_init("test", LOG_DEBUG);
    return 0;
}

static void held_lines_wait_for_the_flush(void **state)
{
    capture c;
    int got[200];
    (void)state;

    capture_start(&c);
    assert_int_equal(cm_log_hold(), 0);
    for (int i = 0; i < 100; i++)
        log_info("held line msg=%d padding=%080d", i, 0);
    capture_read(&c);
    int before = c.n;
    cm_log_flush();
    capture_read(&c);
    int after_flush = c.n;
    log_debug("after the flush msg=%d", 100);
    cm_log_release();
    capture_end(&c);

    assert_int_equal(before, 0);
    /* About 11 kB of lines: three writes of whole lines, not 100. */
    assert_true(after_flush >= 2 && after_flush <= 4);
    assert_int_equal(c.n, after_flush + 1);
    int n = lines_of(&c, got, 200);
    assert_int_equal(n, 101);
    for (int i = 0; i < n; i++)
        assert_int_equal(got[i], i);
    capture_free(&c);
}

static void warnings_are_never_held_and_keep_the_order(void **state)
{
    capture c;
    int got[8];
    (void)state;

    capture_start(&c);
    assert_int_equal(cm_log_hold(), 0);
    log_info("first msg=%d", 0);
    log_info("second msg=%d", 1);
    log_warning("a warning msg=%d", 2);
    capture_read(&c);
    int at_warning = lines_of(&c, got, 8);
    log_error("an error msg=%d", 3);
    log_info("held again msg=%d", 4);
    capture_read(&c);
    int before_release = lines_of(&c, got, 8);
    cm_log_release();
    capture_end(&c);

    assert_int_equal(at_warning, 3);
    assert_int_equal(before_release, 4);
    assert_int_equal(lines_of(&c, got, 8), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(got[i], i);
    capture_free(&c);
}

static void a_dropped_batch_writes_nothing(void **state)
{
    capture c;
    int got[8];
    (void)state;

    capture_start(&c);
    assert_int_equal(cm_log_hold(), 0);
    for (int i = 0; i < 5; i++)
        log_info("rolled back msg=%d", 100 + i);
    assert_int_equal(cm_log_drop(), 5);
    log_info("kept msg=%d", 1);
    cm_log_release();
    log_info("not held msg=%d", 2);
    capture_read(&c);
    int after = c.n;
    capture_end(&c);

    assert_int_equal(after, 2); /* the kept line on release, then one at once */
    assert_int_equal(lines_of(&c, got, 8), 2);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 2);
    assert_int_equal(cm_log_drop(), 0);
    capture_free(&c);
}

static void a_full_buffer_is_written_in_whole_lines(void **state)
{
    capture c;
    static int got[400];
    (void)state;

    capture_start(&c);
    assert_int_equal(cm_log_hold(), 0);
    /* 300 lines of about 1 kB: more than the buffer holds. */
    for (int i = 0; i < 300; i++)
        log_info("big line msg=%d padding=%01000d", i, 0);
    capture_read(&c);
    int while_held = c.n;
    cm_log_release();
    capture_end(&c);

    assert_true(while_held > 0);
    int n = lines_of(&c, got, 400);
    assert_int_equal(n, 300);
    for (int i = 0; i < n; i++)
        assert_int_equal(got[i], i);
    /* Whole lines of at most PIPE_BUF: 3 lines of ~1.07 kB per write, one
     * short write where the buffer was full. */
    assert_true(c.n >= 100 && c.n <= 110);
    capture_free(&c);
}

static void *other_thread(void *arg)
{
    (void)arg;
    log_info("from another thread msg=%d", 7);
    return NULL;
}

static void other_threads_are_not_held(void **state)
{
    capture c;
    pthread_t t;
    int got[4];
    (void)state;

    capture_start(&c);
    assert_int_equal(cm_log_hold(), 0);
    log_info("held msg=%d", 1);
    assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
    pthread_join(t, NULL);
    capture_read(&c);
    int before = lines_of(&c, got, 4);
    int first = before ? got[0] : -1;
    cm_log_release();
    capture_end(&c);

    assert_int_equal(before, 1);
    assert_int_equal(first, 7);
    assert_int_equal(lines_of(&c, got, 4), 2);
    capture_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(held_lines_wait_for_the_flush),
        cmocka_unit_test(warnings_are_never_held_and_keep_the_order),
        cmocka_unit_test(a_dropped_batch_writes_nothing),
        cmocka_unit_test(a_full_buffer_is_written_in_whole_lines),
        cmocka_unit_test(other_threads_are_not_held),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
