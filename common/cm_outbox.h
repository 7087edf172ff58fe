/*
 * cm_outbox.h - the transactional outbox and its relay.
 *
 * A service writes its state change and the event that announces it in one
 * PostgreSQL transaction: its own statement inserts the event into table
 * outbox (topic, msg_key, payload, headers from cm_outbox_headers()) on the
 * caller's connection, inside the caller's transaction; the statement that
 * changes the state does it, so no extra round trip is spent (see
 * cm_outbox_reply_plan() and order-service's POST /orders). A trigger
 * NOTIFYs channel "outbox" on commit, which wakes the relay.
 *
 * The relay is one thread with its own connection and an idempotent producer
 * (acks=all). It publishes rows in id order and deletes a row only after its
 * delivery report says the brokers persisted it, so a crash at any point
 * resends rather than loses (consumers dedupe). One relay per database holds
 * a session advisory lock; other instances of the daemon stand by, which
 * keeps per-key publication order. On a fatal producer error (idempotence
 * state lost) the producer is destroyed and recreated and the unacknowledged
 * rows are sent again.
 */
#pragma once

#include "cm_consumer.h"
#include "cm_health.h"
#include "cm_trace.h"
#include "ev_event.h"

#include <libpq-fe.h>

/* The migration that creates table outbox and its trigger; services list it
 * among their own migrations. */
extern const char cm_outbox_migration[];

/* The headers of a new event as a JSON object text (caller frees): event-id,
 * event-type, event-version, traceparent (a child of parent_traceparent when
 * that is valid, with its flags, else a new trace), __TypeId__; when the
 * parent is sampled, also the parent's span id under an internal key that
 * the relay strips (it is the parent of the publish span). If ret_trace_id
 * is not NULL it receives the trace id (32 hex digits + NUL). Returns 0 or
 * -ENOMEM. */
int cm_outbox_headers(ev_type type, const char *parent_traceparent, char **ret_json,
                      char *ret_trace_id);

/* The handler shape of payment-service and inventory-service, as a
 * set-based consumer plan (see cm_set in cm_consumer.h): the record's row is
 * $1..$3 params (orderId, the key of what is taken, the amount taken), $4
 * the reply topic, $5..$8 the reply payloads for verdicts[0..3], $9 the
 * reply headers. The service's set has two statements: the claim (taking
 * $1..$3) and the apply, which applies the run's claims, writes the reply
 * chosen by each verdict into the outbox and returns (ordinal, verdict) for
 * each record that was not a duplicate. verdicts[0] is the positive one.
 * reply holds the encoded replies; it and params must live until the plan is
 * done. Returns 0 or -ENOMEM. */
typedef struct {
    char *payloads[4];
    char *headers;
} cm_outbox_reply;

/* The number of columns of the row above (the cm_set's ncols). */
#define CM_OUTBOX_REPLY_COLS 9

int cm_outbox_reply_plan(cm_outbox_reply *reply, cm_plan *plan, ev_type reply_type,
                         const char *const params[3], const char *const verdicts[4],
                         const char *parent_traceparent);
/* After the plan ran: returns 1 with the verdict copied into ret_verdict, or
 * 0 for a duplicate. */
int cm_outbox_reply_done(const cm_plan *plan, char *ret_verdict, size_t verdict_len);
/* Frees what cm_outbox_reply_plan() allocated (not reply itself). */
void cm_outbox_reply_free(cm_outbox_reply *reply);

typedef struct cm_relay cm_relay;

/* Starts the relay thread. db_url and client_id must outlive the relay.
 * tracer (NULL: off) gets a PRODUCER span per delivered row whose headers
 * were written from a sampled parent: its id is the span id of the row's
 * traceparent, its parent the span that wrote the row. */
int cm_relay_start(const char *db_url, const char *client_id, int batch, cm_health *health,
                   cm_tracer *tracer, cm_relay **ret);
/* Asks the relay to stop, waits for in-flight deliveries (bounded by
 * message.timeout.ms), joins and frees it. NULL is fine. */
void cm_relay_stop(cm_relay *relay);
