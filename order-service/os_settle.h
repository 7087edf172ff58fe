/*
 * os_settle.h - the order state machine, as pure functions (no I/O).
 *
 * An order starts PENDING. It becomes CONFIRMED only when payment is approved
 * and stock is reserved, REJECTED as soon as either side says no. Replies may
 * arrive in any order and more than once; a reply for a side that already has
 * an outcome changes nothing, and a settled order never changes status.
 */
#pragma once

#include <stdbool.h>

typedef enum {
    OS_PENDING = 0,
    OS_CONFIRMED = 1,
    OS_REJECTED = 2,
} os_status;

typedef enum {
    OS_OUTCOME_UNKNOWN = 0, /* no reply yet */
    OS_OUTCOME_YES = 1,     /* approved / reserved */
    OS_OUTCOME_NO = 2,      /* declined / rejected */
} os_outcome;

typedef struct {
    os_status status;
    os_outcome payment;
    os_outcome inventory;
} os_order_state;

typedef enum {
    OS_SIDE_PAYMENT = 1,
    OS_SIDE_INVENTORY = 2,
} os_side;

/* Applies one reply (side said yes/no) to *state. Returns true if the state
 * changed (a first reply for that side), false for a duplicate reply, which
 * leaves *state untouched. The status is derived from the two outcomes:
 * any NO -> REJECTED, both YES -> CONFIRMED, else PENDING. */
bool os_settle_apply(os_order_state *state, os_side side, bool yes);

/* The transitions of one reply (side said yes/no) from every prior state, as
 * a 9-character table: entry 3 * p + i is for payment outcome p and inventory
 * outcome i (0 unknown, 1 yes, 2 no); it is '-' where the reply changes
 * nothing (a duplicate), else the first letter of the new status (P, C, R).
 * Lets a database statement apply the transition without a second round
 * trip. out receives 9 characters and a NUL. */
void os_settle_table(os_side side, bool yes, char out[10]);

/* "PENDING", "CONFIRMED", "REJECTED"; parse returns -1 for anything else. */
const char *os_status_name(os_status s);
int os_status_parse(const char *s);
