/* SPDX-License-Identifier: MIT */
/*
 * The configuration file: INI, parsed by Debian's libinih. Keys are the
 * long option names (underscores accepted for dashes), in no section or
 * in [dotspool]. Unknown keys and sections are errors, reported with the
 * file, the line and the key.
 */
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <string.h>

#include "options.h"

struct cf_state {
	struct io_config *cfg;
	const char *path;
	char *err;
	size_t errcap;
	bool failed;
};

/* Debian's libinih has no line number in the handler: ini_parse_file() returns the line of the first error.
 */
static int cf_handler(void *user, const char *section, const char *name, const char *value)
{
	struct cf_state *st = user;
	char key[64];
	char msg[512];

	if (st->failed)
		return 0;
	if (section[0] && strcmp(section, "dotspool") != 0) {
		snprintf(st->err, st->errcap, "unknown section [%s] (use [dotspool] or none)", section);
		st->failed = true;
		return 0;
	}
	if (strlen(name) >= sizeof(key)) {
		snprintf(st->err, st->errcap, "unknown key '%.64s...'", name);
		st->failed = true;
		return 0;
	}
	for (size_t i = 0;; i++) {
		key[i] = name[i] == '_' ? '-' : name[i];
		if (!name[i])
			break;
	}
	if (!daemon_option_known(key) || !strcmp(key, "no-prewrite")) {
		snprintf(st->err, st->errcap, "unknown key '%s'", name);
		st->failed = true;
		return 0;
	}
	if (daemon_option_apply(st->cfg, key, value, msg, sizeof(msg)) < 0) {
		snprintf(st->err, st->errcap, "%s", msg);
		st->failed = true;
		return 0;
	}
	return 1;
}

int daemon_config_load_file(struct io_config *cfg, const char *path, char *err, size_t errcap)
{
	struct cf_state st = {.cfg = cfg, .path = path, .err = err, .errcap = errcap};
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errcap, "%s: %s", path, strerror(errno));
		return -errno;
	}
	daemon_config_begin_source(cfg);
	int ret = ini_parse_file(f, cf_handler, &st);
	fclose(f);
	if (st.failed) {
		char msg[512];
		snprintf(msg, sizeof(msg), "%s", err);
		snprintf(err, errcap, "%s:%d: %s", path, ret, msg);
		return -EINVAL;
	}
	if (ret != 0) {
		snprintf(err, errcap, "%s:%d: syntax error (want 'key = value')", path, ret);
		return -EINVAL;
	}
	return 0;
}
