/*
 * oc_story.h - the state of "orderctl order ID" (oc_story.c gathers it,
 * oc_story_out.c prints it) and of "orderctl orders stuck" (oc_stuck.c).
 */
#pragma once

#include "oc_api.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    const char *id;
    bool json;
    int64_t dlt_max; /* 0: the DLTs are not searched */
    oc_api api;
    /* How the sources fared. */
    bool unreachable;        /* a daemon (no answer, 5xx) or the brokers */
    bool denied;             /* a daemon answered 401/403 */
    bool unexpected;         /* another 4xx */
    bool told[OC_SVC_COUNT]; /* its failure was reported on stderr */
    json_t *unavailable;     /* [{service, error}] */
    json_t *dlt;             /* the order's dead-letter records; NULL: not searched */
} oc_story;

/* True if id can name an order (1 to 64 printable ASCII, no spaces). */
bool oc_story_id_valid(const char *id);

/* Records how svc answered ans; reports a failure on stderr once per daemon. */
void oc_story_note(oc_story *s, oc_svc svc, const oc_answer *ans);

/* Prints the story (text or JSON) and returns the exit status. */
int oc_story_print(oc_story *s, const oc_answer *order, const oc_answer *payment,
                   const oc_answer *reservation, const oc_answer outbox[OC_SVC_COUNT]);

/* Parses an RFC 3339 UTC time ("2026-12-03T09:15:00.123456Z", any number of
 * fraction digits) into microseconds since the epoch; INT64_MAX when s is
 * not one. */
int64_t oc_story_time_us(const char *s);
