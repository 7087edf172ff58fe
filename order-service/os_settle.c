/*
 * os_settle.c - see os_settle.h.
 *
 * The status is never stored independently of the two outcomes: it is
 * recomputed from them, and an outcome is written only once. Since NO is
 * absorbing and CONFIRMED needs both outcomes (after which nothing can be
 * written), a settled order cannot change status.
 */
#include "os_settle.h"

#include <assert.h>
#include <stddef.h>
#include <string.h>

static const char *const status_names[] = {
    [OS_PENDING] = "PENDING",
    [OS_CONFIRMED] = "CONFIRMED",
    [OS_REJECTED] = "REJECTED",
};

#define N_STATUS (sizeof(status_names) / sizeof(status_names[0]))

static os_status derive(os_outcome payment, os_outcome inventory)
{
    if (payment == OS_OUTCOME_NO || inventory == OS_OUTCOME_NO)
        return OS_REJECTED;
    if (payment == OS_OUTCOME_YES && inventory == OS_OUTCOME_YES)
        return OS_CONFIRMED;
    return OS_PENDING;
}

bool os_settle_apply(os_order_state *state, os_side side, bool yes)
{
    os_outcome *slot;

    assert(state);
    if (side == OS_SIDE_PAYMENT)
        slot = &state->payment;
    else if (side == OS_SIDE_INVENTORY)
        slot = &state->inventory;
    else
        return false;
    if (*slot != OS_OUTCOME_UNKNOWN)
        return false;
    *slot = yes ? OS_OUTCOME_YES : OS_OUTCOME_NO;
    state->status = derive(state->payment, state->inventory);
    return true;
}

const char *os_status_name(os_status s)
{
    return (size_t)s < N_STATUS ? status_names[s] : NULL;
}

int os_status_parse(const char *s)
{
    for (size_t i = 0; s && i < N_STATUS; i++)
        if (strcmp(s, status_names[i]) == 0)
            return (int)i;
    return -1;
}

void os_settle_table(os_side side, bool yes, char out[10])
{
    static const os_outcome outcomes[3] = {OS_OUTCOME_UNKNOWN, OS_OUTCOME_YES, OS_OUTCOME_NO};

    for (int p = 0; p < 3; p++) {
        for (int i = 0; i < 3; i++) {
            os_order_state st = {OS_PENDING, OS_OUTCOME_UNKNOWN, OS_OUTCOME_UNKNOWN};
            /* Reach the prior state through the machine itself. */
            if (outcomes[p] != OS_OUTCOME_UNKNOWN)
                os_settle_apply(&st, OS_SIDE_PAYMENT, outcomes[p] == OS_OUTCOME_YES);
            if (outcomes[i] != OS_OUTCOME_UNKNOWN)
                os_settle_apply(&st, OS_SIDE_INVENTORY, outcomes[i] == OS_OUTCOME_YES);
            out[p * 3 + i] = os_settle_apply(&st, side, yes) ? os_status_name(st.status)[0] : '-';
        }
    }
    out[9] = '\0';
}
