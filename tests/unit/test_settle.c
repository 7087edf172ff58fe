/*
 * test_settle.c - the order state machine (os_settle) over every ordering and
 * duplication of the payment and inventory replies.
 *
 * Every sequence of 0 to 4 replies drawn from {payment yes, payment no,
 * inventory yes, inventory no} is applied to a fresh order. A model kept in
 * the test records the first reply of each side; the expected status is
 * computed from that model by the rule in the design, independently of the
 * code under test, and checked after every step.
 */
#include "os_settle.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define MAX_LEN 4
#define N_REPLIES 4

typedef struct {
    os_side side;
    bool yes;
    const char *label;
} reply;

static const reply replies[N_REPLIES] = {
    {OS_SIDE_PAYMENT, true, "payment-yes"},
    {OS_SIDE_PAYMENT, false, "payment-no"},
    {OS_SIDE_INVENTORY, true, "inventory-yes"},
    {OS_SIDE_INVENTORY, false, "inventory-no"},
};

/* The model: -1 = no reply yet, 0 = first reply no, 1 = first reply yes. */
typedef struct {
    int payment;
    int inventory;
} model;

static os_status expected_status(model m)
{
    if (m.payment == 0 || m.inventory == 0)
        return OS_REJECTED;
    if (m.payment == 1 && m.inventory == 1)
        return OS_CONFIRMED;
    return OS_PENDING;
}

static os_outcome expected_outcome(int first)
{
    return first < 0 ? OS_OUTCOME_UNKNOWN : first ? OS_OUTCOME_YES : OS_OUTCOME_NO;
}

static void describe(char *buf, size_t len, const int *seq, size_t n)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && used < len; i++)
        used +=
            (size_t)snprintf(buf + used, len - used, "%s%s", i ? "," : "", replies[seq[i]].label);
}

/* Applies one sequence and checks every step against the model. */
static void run_sequence(const int *seq, size_t n)
{
    os_order_state st = {OS_PENDING, OS_OUTCOME_UNKNOWN, OS_OUTCOME_UNKNOWN};
    model m = {-1, -1};
    bool settled = false;
    os_status settled_as = OS_PENDING;
    char what[128];

    describe(what, sizeof(what), seq, n);
    for (size_t i = 0; i < n; i++) {
        const reply *r = &replies[seq[i]];
        int *first = r->side == OS_SIDE_PAYMENT ? &m.payment : &m.inventory;
        bool is_first = *first < 0;
        os_order_state before = st;
        bool changed = os_settle_apply(&st, r->side, r->yes);

        if (changed != is_first)
            fail_msg("sequence [%s] step %zu: apply returned %d, expected %d", what, i, changed,
                     is_first);
        if (is_first)
            *first = r->yes ? 1 : 0;
        else if (memcmp(&before, &st, sizeof(st)) != 0)
            fail_msg("sequence [%s] step %zu: duplicate reply changed the state", what, i);
        if (st.status != expected_status(m))
            fail_msg("sequence [%s] step %zu: status %s, expected %s", what, i,
                     os_status_name(st.status), os_status_name(expected_status(m)));
        assert_int_equal(st.payment, expected_outcome(m.payment));
        assert_int_equal(st.inventory, expected_outcome(m.inventory));
        if (settled && st.status != settled_as)
            fail_msg("sequence [%s] step %zu: settled order changed from %s to %s", what, i,
                     os_status_name(settled_as), os_status_name(st.status));
        if (!settled && st.status != OS_PENDING) {
            settled = true;
            settled_as = st.status;
        }
    }
    if (st.status != expected_status(m))
        fail_msg("sequence [%s]: final status %s, expected %s", what, os_status_name(st.status),
                 os_status_name(expected_status(m)));
}

static void test_every_sequence(void **state)
{
    int seq[MAX_LEN];
    size_t tested = 0, per_len[MAX_LEN + 1] = {0};

    (void)state;
    for (size_t len = 0; len <= MAX_LEN; len++) {
        size_t count = 1;
        for (size_t i = 0; i < len; i++)
            count *= N_REPLIES;
        /* Sequence number k, written in base N_REPLIES, is the sequence. */
        for (size_t k = 0; k < count; k++) {
            size_t x = k;
            for (size_t i = 0; i < len; i++, x /= N_REPLIES)
                seq[i] = (int)(x % N_REPLIES);
            run_sequence(seq, len);
            per_len[len]++;
            tested++;
        }
    }
    /* 1 + 4 + 16 + 64 + 256 */
    assert_int_equal(tested, 341);
    assert_int_equal(per_len[MAX_LEN], 256);
}

/* Spot checks that read as the design's sentences, on top of the sweep. */
static void test_named_outcomes(void **state)
{
    os_order_state st = {0};

    (void)state;
    assert_int_equal(st.status, OS_PENDING);
    assert_true(os_settle_apply(&st, OS_SIDE_INVENTORY, true));
    assert_int_equal(st.status, OS_PENDING);
    assert_true(os_settle_apply(&st, OS_SIDE_PAYMENT, true));
    assert_int_equal(st.status, OS_CONFIRMED);
    assert_false(os_settle_apply(&st, OS_SIDE_PAYMENT, false));
    assert_int_equal(st.status, OS_CONFIRMED);

    memset(&st, 0, sizeof(st));
    assert_true(os_settle_apply(&st, OS_SIDE_PAYMENT, false));
    assert_int_equal(st.status, OS_REJECTED);
    assert_true(os_settle_apply(&st, OS_SIDE_INVENTORY, true));
    assert_int_equal(st.status, OS_REJECTED);
    assert_int_equal(st.inventory, OS_OUTCOME_YES); /* kept: needed for compensation */
}

static void test_unknown_side_ignored(void **state)
{
    os_order_state st = {0}, before;

    (void)state;
    before = st;
    assert_false(os_settle_apply(&st, (os_side)0, true));
    assert_false(os_settle_apply(&st, (os_side)3, false));
    assert_memory_equal(&st, &before, sizeof(st));
}

static void test_status_names(void **state)
{
    static const os_status all[] = {OS_PENDING, OS_CONFIRMED, OS_REJECTED};
    static const char *const bad[] = {"",         "pending",    "Confirmed", "REJECTED ",
                                      " PENDING", "CONFIRMEDX", "REJECT"};

    (void)state;
    assert_string_equal(os_status_name(OS_PENDING), "PENDING");
    assert_string_equal(os_status_name(OS_CONFIRMED), "CONFIRMED");
    assert_string_equal(os_status_name(OS_REJECTED), "REJECTED");
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        assert_int_equal(os_status_parse(os_status_name(all[i])), all[i]);
    assert_null(os_status_name((os_status)3));
    assert_null(os_status_name((os_status)-1));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(os_status_parse(bad[i]), -1);
    assert_int_equal(os_status_parse(NULL), -1);
}

/* The transition table, against the rule computed here from scratch: a side
 * that already answered ignores the reply; otherwise any "no" rejects, two
 * "yes" confirm, and one answer leaves the order pending. */
static void test_transition_table(void **state)
{
    (void)state;
    for (int side = OS_SIDE_PAYMENT; side <= OS_SIDE_INVENTORY; side++) {
        for (int yes = 0; yes <= 1; yes++) {
            char table[10];
            os_settle_table((os_side)side, yes, table);
            assert_int_equal(strlen(table), 9);
            for (int p = 0; p < 3; p++) {
                for (int i = 0; i < 3; i++) {
                    int mine = side == OS_SIDE_PAYMENT ? p : i;
                    int np = side == OS_SIDE_PAYMENT ? (yes ? 1 : 2) : p;
                    int ni = side == OS_SIDE_INVENTORY ? (yes ? 1 : 2) : i;
                    char want = mine != 0              ? '-'
                                : (np == 2 || ni == 2) ? 'R'
                                : (np == 1 && ni == 1) ? 'C'
                                                       : 'P';
                    assert_int_equal(table[p * 3 + i], want);
                }
            }
        }
    }
}

static void test_transition_table_literals(void **state)
{
    char t[10];
    (void)state;
    os_settle_table(OS_SIDE_PAYMENT, true, t);
    assert_string_equal(t, "PCR------");
    os_settle_table(OS_SIDE_PAYMENT, false, t);
    assert_string_equal(t, "RRR------");
    os_settle_table(OS_SIDE_INVENTORY, true, t);
    assert_string_equal(t, "P--C--R--");
    os_settle_table(OS_SIDE_INVENTORY, false, t);
    assert_string_equal(t, "R--R--R--");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_sequence),
        cmocka_unit_test(test_named_outcomes),
        cmocka_unit_test(test_unknown_side_ignored),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_transition_table),
        cmocka_unit_test(test_transition_table_literals),
    };
    return cmocka_run_group_tests_name("settle", tests, NULL, NULL);
}
