/* SPDX-License-Identifier: MIT */
/*
 * ds-powercut-dlvstate: the delivery state a spool holds, as recovery will
 * fold it (spool_reader_foreach_status: every outcome record of every lane,
 * abort records applied). test_powercut_deliver.py runs it on the disk
 * right after a power cut, before the server restarts, so what it prints is
 * exactly what survived the cut (no new delivery has written anything yet).
 *
 *   ds-powercut-dlvstate SPOOL
 *       one line per message:
 *           ID ATTEMPTS RCPT=STATE:ATTEMPT[:dup] ...
 *       STATE one of P (pending), A (attempt, no outcome), D (delivered),
 *       R (deferred), F (failed); "dup" when the winning entry carries the
 *       possible-duplicate flag. Exit 0 if the spool could be read, 1 if not.
 *
 * Not dotspool-ctl list --json: that does not print the delivery state
 * yet, and this needs no JSON.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "spool.h"
#include "spool_id.h"
#include "spool_reader.h"

static int print_one(void *ctx, const struct spool_msg *m, const struct spool_msg_status *st)
{
	static const char states[] = "PADRF";
	char id[32];
	(void)ctx;
	spool_id_format(m->id, id, sizeof(id));
	printf("%s %" PRIu32, id, st->attempts);
	for (uint32_t i = 0; i < m->env.rcpt_count; i++) {
		const struct spool_rcpt_status *r = i < st->rcpt_count ? &st->rcpt[i] : NULL;
		uint8_t s = r ? r->state : SPOOL_RCPT_PENDING;
		printf(" %s=%c:%" PRIu32 "%s", m->env.rcpt[i].addr, s < sizeof(states) - 1 ? states[s] : '?',
		       r ? r->attempt : 0, r && r->possible_duplicate ? ":dup" : "");
	}
	putchar('\n');
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: ds-powercut-dlvstate SPOOL\n");
		return 2;
	}
	struct spool_reader *r;
	int ret = spool_reader_open(&r, argv[1]);
	if (ret < 0) {
		fprintf(stderr, "ds-powercut-dlvstate: %s: %s\n", argv[1], strerror(-ret));
		return 1;
	}
	ret = spool_reader_foreach_status(r, print_one, NULL);
	spool_reader_close(r);
	if (ret < 0) {
		fprintf(stderr, "ds-powercut-dlvstate: %s: %s\n", argv[1], strerror(-ret));
		return 1;
	}
	return fflush(stdout) ? 1 : 0;
}
