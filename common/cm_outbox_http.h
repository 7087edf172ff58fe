/*
 * cm_outbox_http.h - the read side of the outbox over HTTP: which events of
 * one order a daemon has committed but its relay has not yet published.
 *
 * Each daemon registers the handler on its own route table, with its own
 * read scope:
 *     {"GET", "/outbox/{}", cm_outbox_http_get, NULL, "orders:read"}
 * It answers 200 with {orderId, service, count, truncated, unpublished:
 * [{id, topic, eventType, eventId, traceparent, createdAt, ageSeconds}]},
 * oldest first, at most CM_OUTBOX_HTTP_MAX rows; an empty list when nothing
 * of that order waits (the normal case: the relay deletes a row once the
 * brokers acknowledged it). Attempts are not tracked: a row is sent again
 * only after a producer was recreated or the daemon restarted. The outbox
 * has no index on its key, so the lookup reads the backlog, which is small
 * unless Kafka has been unreachable for a while.
 */
#pragma once

#include "cm_http.h"

#define CM_OUTBOX_HTTP_MAX 100

/* cm_http_fn for GET /outbox/{orderId}; ctx is the cm_daemon. */
void cm_outbox_http_get(void *ctx, const cm_http_req *req, cm_http_resp *resp);
