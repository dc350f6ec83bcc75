/* SPDX-License-Identifier: MIT */
#ifndef DS_DAEMON_OPTIONS_H
#define DS_DAEMON_OPTIONS_H

/*
 * Every setting of the server, in one table (daemon/options.c): the
 * command line (--name value) and the configuration file (name = value,
 * daemon/config_file.c) both go through daemon_option_apply(), so a flag
 * and its config key can never drift apart. They fill struct io_config,
 * what the engine is told (io/io_config.h).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "io_config.h"

void daemon_config_defaults(struct io_config *cfg);
/* A new source (the command line after the file) replaces lists rather than extending them. */
void daemon_config_begin_source(struct io_config *cfg);
bool daemon_option_known(const char *name);
bool daemon_option_takes_value(const char *name);
/* 0, or -EINVAL with a one-line reason in err. */
int daemon_option_apply(struct io_config *cfg, const char *name, const char *value, char *err, size_t errcap);
/* Defaults that depend on other settings, and constraints between keys. */
int daemon_config_finish(struct io_config *cfg, char *err, size_t errcap);
void daemon_options_usage(FILE *f);
/*
 * The delivery settings as understood, for --check-config: nothing without
 * --deliver-to, else one line per hop in order ("dotspool: deliver-to N:
 * URL kind=... addr=... port=..."), then one line of every deliver key=value.
 */
void daemon_config_print_deliver(FILE *f, const struct io_config *cfg);

/* daemon/hop_url.c: one --deliver-to URL. 0, or -EINVAL with a one-line reason in err. */
int daemon_hop_parse(const char *url, struct io_hop_spec *h, char *err, size_t errcap);
void daemon_hop_describe(const struct io_hop_spec *h, char *out, size_t cap);

/* daemon/config_file.c: INI file (libinih). err gets "FILE:LINE: message". */
int daemon_config_load_file(struct io_config *cfg, const char *path, char *err, size_t errcap);

/*
 * Reload what SIGHUP reloads (TLS certificate and key, --recipients table):
 * raises SIGHUP, taken by the main thread (daemon/main.c). Any thread;
 * returns at once, the reload runs asynchronously.
 */
void daemon_reload(void);

#endif
