/*
 * cm_batch.h - group commit: work items that arrive while one batch is being
 * written are written together, in the next one.
 *
 * One thread takes every queued item (up to max) as soon as there is one and
 * hands them to the flush callback; while that runs (a transaction and its
 * commit), new items queue up and form the next batch. An item that arrives
 * when nothing is queued is flushed at once: no timer, no added latency when
 * the load is light, and batches grow by themselves with the load.
 *
 * The flush callback owns the items it is given (it answers or frees each).
 */
#pragma once

typedef struct cm_batch cm_batch;

/* Writes items[0..n-1] (1 <= n <= max); runs on the batch thread. */
typedef void (*cm_batch_flush_fn)(void *ctx, void **items, int n);

/* Starts the batch thread. Returns 0 or a negative errno. */
int cm_batch_start(int max, cm_batch_flush_fn flush, void *ctx, cm_batch **ret);

/* Queues item. Returns 0, or -ESHUTDOWN once cm_batch_stop() has begun (the
 * item stays the caller's), or -ENOMEM. Thread-safe. */
int cm_batch_submit(cm_batch *b, void *item);

/* Refuses new items from now on, flushes the queued ones and joins the
 * thread. Submitting stays safe (it fails) until cm_batch_free(). NULL is
 * fine; a second call does nothing. */
void cm_batch_stop(cm_batch *b);
/* Frees a stopped (or never started) batch. NULL is fine. */
void cm_batch_free(cm_batch *b);
