/*
 * test_db.c - the SQLSTATE classifier (cm_db_classify_sqlstate): what the
 * consumer loop treats as an outage (wait, never dead-letter), as a
 * transient conflict (retry without counting) and as a fault of the record.
 */
#include "cm_db.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

static const struct {
    const char *state;
    int want;
    const char *what;
} cases[] = {
    /* the server, not the record */
    {"08000", -ECONNRESET, "connection_exception"},
    {"08006", -ECONNRESET, "connection_failure"},
    {"08P01", -ECONNRESET, "protocol_violation"},
    {"25006", -ECONNRESET, "read_only_sql_transaction (standby after a failover)"},
    {"53000", -ECONNRESET, "insufficient_resources"},
    {"53100", -ECONNRESET, "disk_full"},
    {"53200", -ECONNRESET, "out_of_memory"},
    {"53300", -ECONNRESET, "too_many_connections"},
    {"55P03", -ECONNRESET, "lock_not_available (lock_timeout)"},
    {"57014", -ECONNRESET, "query_canceled (statement_timeout)"},
    {"57P01", -ECONNRESET, "admin_shutdown"},
    {"57P02", -ECONNRESET, "crash_shutdown"},
    {"57P03", -ECONNRESET, "cannot_connect_now"},
    {"58000", -ECONNRESET, "system_error"},
    {"58030", -ECONNRESET, "io_error"},
    {NULL, -ECONNRESET, "no SQLSTATE at all"},
    {"", -ECONNRESET, "empty SQLSTATE"},
    /* transient conflicts: retried, never counted toward the DLT */
    {"40001", -EAGAIN, "serialization_failure"},
    {"40P01", -EAGAIN, "deadlock_detected"},
    /* the statement (and so the record) */
    {"23505", -EIO, "unique_violation"},
    {"23503", -EIO, "foreign_key_violation"},
    {"22003", -EIO, "numeric_value_out_of_range"},
    {"22P02", -EIO, "invalid_text_representation"},
    {"42P01", -EIO, "undefined_table"},
    {"25P02", -EIO, "in_failed_sql_transaction"},
    {"40002", -EIO, "transaction_integrity_constraint_violation"},
    {"P0001", -EIO, "raise_exception"},
    {"XX000", -EIO, "internal_error"},
};

static void sqlstate_classes(void **unused)
{
    (void)unused;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = cm_db_classify_sqlstate(cases[i].state);
        if (got != cases[i].want)
            fail_msg("SQLSTATE %s (%s): got %d, want %d", cases[i].state ? cases[i].state : "NULL",
                     cases[i].what, got, cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sqlstate_classes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
