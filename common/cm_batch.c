/*
 * cm_batch.c - see cm_batch.h. The queue is a growable array that the batch
 * thread swaps for its own (empty) one under the lock, so submitters never
 * wait for a flush.
 */
#include "cm_batch.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct {
    void **items;
    int n, cap;
} vec;

struct cm_batch {
    int max;
    cm_batch_flush_fn flush;
    void *ctx;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t more;
    vec queue; /* under lock */
    bool stopping;
    bool joined;
};

static int vec_push(vec *v, void *item)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 64;
        void **items = realloc(v->items, (size_t)cap * sizeof(*items));
        if (!items)
            return -ENOMEM;
        v->items = items;
        v->cap = cap;
    }
    v->items[v->n++] = item;
    return 0;
}

int cm_batch_submit(cm_batch *b, void *item)
{
    int r = -ESHUTDOWN;

    pthread_mutex_lock(&b->lock);
    if (!b->stopping)
        r = vec_push(&b->queue, item);
    if (r == 0 && b->queue.n == 1)
        pthread_cond_signal(&b->more);
    pthread_mutex_unlock(&b->lock);
    return r;
}

static void *batch_main(void *arg)
{
    cm_batch *b = arg;
    vec mine = {0};

    for (;;) {
        pthread_mutex_lock(&b->lock);
        while (b->queue.n == 0 && !b->stopping)
            pthread_cond_wait(&b->more, &b->lock);
        if (b->queue.n == 0) { /* stopping, and nothing left */
            pthread_mutex_unlock(&b->lock);
            break;
        }
        vec t = b->queue;
        b->queue = mine;
        mine = t;
        pthread_mutex_unlock(&b->lock);
        for (int i = 0; i < mine.n; i += b->max)
            b->flush(b->ctx, mine.items + i, mine.n - i < b->max ? mine.n - i : b->max);
        mine.n = 0;
    }
    free(mine.items);
    return NULL;
}

int cm_batch_start(int max, cm_batch_flush_fn flush, void *ctx, cm_batch **ret)
{
    cm_batch *b = calloc(1, sizeof(*b));
    int r;

    if (!b)
        return -ENOMEM;
    b->max = max > 0 ? max : 1;
    b->flush = flush;
    b->ctx = ctx;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->more, NULL);
    r = pthread_create(&b->thread, NULL, batch_main, b);
    if (r == 0)
        pthread_setname_np(b->thread, "group-commit");
    if (r != 0) {
        pthread_mutex_destroy(&b->lock);
        pthread_cond_destroy(&b->more);
        free(b);
        return -r;
    }
    *ret = b;
    return 0;
}

void cm_batch_stop(cm_batch *b)
{
    if (!b || b->joined)
        return;
    pthread_mutex_lock(&b->lock);
    b->stopping = true;
    pthread_cond_signal(&b->more);
    pthread_mutex_unlock(&b->lock);
    pthread_join(b->thread, NULL);
    b->joined = true;
}

void cm_batch_free(cm_batch *b)
{
    if (!b)
        return;
    cm_batch_stop(b);
    free(b->queue.items);
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->more);
    free(b);
}
