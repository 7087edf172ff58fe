/*
 * orderctl.c - the operators' command line tool: wiring only. Global
 * options, then "<group> <command>" picks a command of oc_cmd.h, which
 * parses the rest of the line itself.
 */
#include "oc_cmd.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl [common options] COMMAND [options]\n"
    "\n"
    "Set a host up (a service's database, the HTTP API's token file), operate the\n"
    "dead-letter topics and the topics of the order system, make bearer tokens.\n"
    "\n"
    "Commands:\n"
    "  dlt tail [-f]    print the records of the dead-letter topics, decoded\n"
    "  dlt depth        records per dead-letter partition and how many are not\n"
    "                   replayed yet (a monitoring check: --warn N)\n"
    "  dlt replay       send dead-letter records back to their original topic,\n"
    "                   each at most once\n"
    "  topics ensure    create the missing topics, report drift of existing ones\n"
    "  token new        a new bearer token for the HTTP API and its token-file line\n"
    "  token hash       the token-file hash of a token read from stdin\n"
    "  token init       write a host's token file and print its clients' tokens\n"
    "  db create        a service's PostgreSQL role and database (administrator's\n"
    "                   connection; --pgpass: a password and its pgpass file)\n"
    "  acls show        print the least-privilege ACLs of the system's principals\n"
    "  acls ensure      create the missing ACLs, report (--prune: delete) extra ones\n"
    "  order ID         everything known about one order, in time order (the three\n"
    "                   daemons' HTTP APIs, their outboxes, the dead-letter topics)\n"
    "  orders stuck     orders PENDING for longer than --older-than, with the reply\n"
    "                   each one waits for (exit 1 when there are some)\n"
    "\n"
    "\"orderctl COMMAND --help\" (e.g. orderctl dlt replay --help) shows the options\n"
    "of a command. Common options go before or after the command.\n"
    "\n" OC_COMMON_HELP "  --version                    print the version\n"
    "\n"
    "Exit status: 0 ok, 1 finding (DLT depth above threshold, topic drift, a record\n"
    "that could not be replayed, ACL drift), 2 usage error, 3 broker or infrastructure\n"
    "error, 78 configuration error (an unknown or invalid KAFKA_* variable, checked\n"
    "as the daemons check it, before any connection). order and orders stuck: 69 a\n"
    "daemon or the brokers unreachable, 77 a token refused (see their --help).\n";

typedef struct {
    const char *group, *name;
    int (*fn)(oc_opts *o, int argc, char **argv);
    bool kafka; /* talks to Kafka: its KAFKA_* environment is checked first */
} command;

static const command commands[] = {
    {"dlt", "tail", oc_cmd_dlt_tail, true},
    {"dlt", "depth", oc_cmd_dlt_depth, true},
    {"dlt", "replay", oc_cmd_dlt_replay, true},
    {"topics", "ensure", oc_cmd_topics_ensure, true},
    {"token", "new", oc_cmd_token_new, false},
    {"token", "hash", oc_cmd_token_hash, false},
    {"acls", "show", oc_cmd_acls_show, false},
    {"acls", "ensure", oc_cmd_acls_ensure, true},
    {"token", "init", oc_cmd_token_init, false},
    {"db", "create", oc_cmd_db_create, false},
    {"orders", "stuck", oc_cmd_orders_stuck, false},
};

/* "order ID": the word after the group is the command's argument. */
static const command order_command = {"order", NULL, oc_cmd_order, true};

/* Parses the common options before the command; returns -1 to go on. */
static int parse_global(oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        OC_COMMON_LONGOPTS,
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int opt, c;

    while ((opt = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        if ((c = oc_opts_common(o, opt, optarg)) != 0) {
            if (c < 0)
                return OC_EXIT_USAGE;
        } else if (opt == 'h') {
            fputs(usage_text, stdout);
            return OC_EXIT_OK;
        } else if (opt == 'V') {
            printf("orderctl %s (librdkafka %s)\n", ORDERS_VERSION, rd_kafka_version_str());
            return OC_EXIT_OK;
        } else {
            return oc_usage("unknown option");
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    oc_opts o;
    int r, first;

    oc_opts_default(&o);
    r = parse_global(&o, argc, argv);
    if (r >= 0)
        return r;
    first = optind;
    if (first >= argc)
        return oc_usage("missing command");
    if (strcmp(argv[first], order_command.group) == 0) {
        oc_signals_install();
        o.kafka = order_command.kafka;
        optind = 0;
        return order_command.fn(&o, argc - first, argv + first);
    }
    if (first + 1 >= argc || strcmp(argv[first + 1], "--help") == 0 ||
        strcmp(argv[first + 1], "-h") == 0) {
        bool known = false;

        for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
            known = known || strcmp(commands[i].group, argv[first]) == 0;
        if (!known)
            return oc_usage("unknown command \"%s\"", argv[first]);
        if (first + 1 >= argc)
            return oc_usage("\"%s\" needs a command", argv[first]);
        fputs(usage_text, stdout);
        return OC_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(commands[i].group, argv[first]) == 0 &&
            strcmp(commands[i].name, argv[first + 1]) == 0) {
            oc_signals_install();
            o.kafka = commands[i].kafka;
            optind = 0; /* glibc: start over on the command's own vector */
            return commands[i].fn(&o, argc - first - 1, argv + first + 1);
        }
    }
    return oc_usage("unknown command \"%s %s\"", argv[first], argv[first + 1]);
}
