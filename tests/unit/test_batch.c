/*
 * test_batch.c - the group-commit queue (cm_batch) and the array parameter
 * that carries a batch to PostgreSQL (cm_db_array).
 */
#include "cm_batch.h"
#include "cm_db.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#define ITEMS 200

/* What the flush callback saw; it holds the first flush until released, so
 * that the items submitted meanwhile must form the next batch. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool release;
    bool first_started;
    int batches;
    int seen[ITEMS];
    int order[ITEMS];
    int norder;
    int largest;
} probe;

static void flush(void *ctx, void **items, int n)
{
    probe *p = ctx;

    pthread_mutex_lock(&p->lock);
    p->batches++;
    if (n > p->largest)
        p->largest = n;
    for (int i = 0; i < n; i++) {
        int k = (int)(intptr_t)items[i];
        p->seen[k]++;
        p->order[p->norder++] = k;
    }
    if (!p->first_started) {
        p->first_started = true;
        pthread_cond_broadcast(&p->cond);
        while (!p->release)
            pthread_cond_wait(&p->cond, &p->lock);
    }
    pthread_mutex_unlock(&p->lock);
}

static void test_items_queued_during_a_flush_form_the_next_batch(void **state)
{
    probe p = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    cm_batch *b = NULL;

    (void)state;
    assert_int_equal(cm_batch_start(64, flush, &p, &b), 0);
    assert_int_equal(cm_batch_submit(b, (void *)(intptr_t)0), 0);
    pthread_mutex_lock(&p.lock);
    while (!p.first_started)
        pthread_cond_wait(&p.cond, &p.lock);
    pthread_mutex_unlock(&p.lock);
    /* A lone item was flushed at once, alone; the rest queue behind it. */
    for (int k = 1; k < ITEMS; k++)
        assert_int_equal(cm_batch_submit(b, (void *)(intptr_t)k), 0);
    pthread_mutex_lock(&p.lock);
    p.release = true;
    pthread_cond_broadcast(&p.cond);
    pthread_mutex_unlock(&p.lock);
    cm_batch_stop(b); /* flushes what is queued */
    assert_int_equal(cm_batch_submit(b, (void *)(intptr_t)1), -ESHUTDOWN);
    cm_batch_free(b);

    for (int k = 0; k < ITEMS; k++)
        assert_int_equal(p.seen[k], 1);
    for (int k = 0; k < ITEMS; k++)
        assert_int_equal(p.order[k], k); /* in submission order */
    assert_int_equal(p.largest, 64);     /* capped at max */
    /* 1 + the 199 queued ones in batches of at most 64. */
    assert_int_equal(p.batches, 1 + (ITEMS - 1 + 63) / 64);
}

static void test_stop_without_items(void **state)
{
    probe p = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    cm_batch *b = NULL;

    (void)state;
    assert_int_equal(cm_batch_start(8, flush, &p, &b), 0);
    cm_batch_stop(b);
    cm_batch_stop(b); /* a second stop does nothing */
    cm_batch_free(b);
    cm_batch_free(NULL);
    assert_int_equal(p.batches, 0);
}

static void test_array_quotes_and_escapes(void **state)
{
    const char *vals[] = {"plain", "with \"quotes\"", "back\\slash", "", "{braces},comma"};
    char *out = NULL;

    (void)state;
    assert_int_equal(cm_db_array(vals, 5, &out), 0);
    assert_string_equal(out, "{\"plain\",\"with \\\"quotes\\\"\",\"back\\\\slash\",\"\","
                             "\"{braces},comma\"}");
    free(out);
    assert_int_equal(cm_db_array(vals, 0, &out), 0);
    assert_string_equal(out, "{}");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_items_queued_during_a_flush_form_the_next_batch),
        cmocka_unit_test(test_stop_without_items),
        cmocka_unit_test(test_array_quotes_and_escapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
