/* SPDX-License-Identifier: MIT */
#ifndef DS_SPOOL_CTL_QUEUE_H
#define DS_SPOOL_CTL_QUEUE_H

/*
 * dotspool-ctl's queue commands (ctl_queue.c, issue 15 point 4): queue and
 * queue --summary read the spool like list (read-only, beside a running
 * server); retry, hold, release, delete, bounce and reload go to the
 * running server over DIR/control.sock.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

bool ctl_queue_is_command(const char *cmd);
/* argv[0, argc): the arguments after the command. Exit status (0, 1, 2 usage). */
int ctl_queue_main(const char *dir, const char *cmd, bool json, int argc, char **argv);
void ctl_queue_usage(FILE *f);

/* Shared with ctl.c's list: a JSON string (quote, backslash, control characters escaped; UTF-8 as is). */
void ctl_json_str(FILE *f, const char *s);
/* A recipient's delivery state (enum spool_rcpt_state) as list and queue print it. */
const char *ctl_rcpt_state_name(uint8_t s);

#endif
