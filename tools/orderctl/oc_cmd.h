/*
 * oc_cmd.h - the orderctl commands. Each parses its own options (argv[0]
 * is the subcommand name), prints its results on stdout and returns an exit
 * status (OC_EXIT_*).
 */
#pragma once

#include "oc_cli.h"

int oc_cmd_dlt_tail(oc_opts *o, int argc, char **argv);
int oc_cmd_dlt_depth(oc_opts *o, int argc, char **argv);
int oc_cmd_dlt_replay(oc_opts *o, int argc, char **argv);
int oc_cmd_topics_ensure(oc_opts *o, int argc, char **argv);
int oc_cmd_token_new(oc_opts *o, int argc, char **argv);
int oc_cmd_token_hash(oc_opts *o, int argc, char **argv);
int oc_cmd_token_init(oc_opts *o, int argc, char **argv);
int oc_cmd_db_create(oc_opts *o, int argc, char **argv);
int oc_cmd_acls_show(oc_opts *o, int argc, char **argv);
int oc_cmd_acls_ensure(oc_opts *o, int argc, char **argv);
int oc_cmd_order(oc_opts *o, int argc, char **argv);
int oc_cmd_orders_stuck(oc_opts *o, int argc, char **argv);
