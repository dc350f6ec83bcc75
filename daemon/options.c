/* SPDX-License-Identifier: MIT */
/*
 * Every setting of the server, in one table: the command line (--name
 * value) and the configuration file (name = value) both go through
 * daemon_option_apply(), so a flag and its config key can never drift apart.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ds_assert.h"
#include "gap.h"
#include "log.h"
#include "options.h"
#include "ring.h"
#include "spool.h"
#include "watermark.h"

enum opt_kind {
	OPT_U32,
	OPT_U64,
	OPT_BOOL,
	OPT_STR,      /* fixed char array in io_config */
	OPT_LISTEN,   /* repeatable */
	OPT_DOMAIN,   /* repeatable */
	OPT_FLAG_NEG, /* bool option whose presence sets the field false (--no-prewrite) */
	OPT_HOP,      /* --deliver-to URL, repeatable */
	OPT_CHOICE,   /* one word of opt_choices(), stored as its index (uint32_t) */
	OPT_SPACE,    /* SIZE or N% of the spool's file system (io_watermark_config) */
	OPT_CIDR,     /* --trusted-network, repeatable */
	OPT_VDOMAIN,  /* --verify-recipients, repeatable */
};

struct opt_def {
	const char *name;
	enum opt_kind kind;
	size_t off; /* into struct io_config */
	uint64_t min, max;
	int listen_kind;
	const char *help;
};

#define CF(f) offsetof(struct io_config, f)

/* Indexes are IO_DELIVER_STARTTLS_* (the values of enum dlv_starttls). */
static const char *const starttls_words[] = {"never", "opportunistic", "required", NULL};

/*
 * --deliver-starttls required with no --deliver-ca verifies against the
 * system's bundle (Debian's ca-certificates); without it, required is
 * refused rather than left with nothing to verify against.
 */
#define DAEMON_SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

/* Seconds: a day for one timeout, 7 days between retries, 30 days in the queue. */
#define DELIVER_TIMEOUT_MAX_S  86400
#define DELIVER_RETRY_MAX_S    (7 * 86400)
#define DELIVER_LIFETIME_MAX_S (30 * 86400)

static const struct opt_def opts[] = {
	{"listen", OPT_LISTEN, 0, 0, 0, IO_LISTEN_SMTP,
	 "ADDR:PORT SMTP listener, repeatable (default 127.0.0.1:2525 when no listener is given)"},
	{"lmtp-listen", OPT_LISTEN, 0, 0, 0, IO_LISTEN_LMTP,
	 "ADDR:PORT LMTP listener (RFC 2033), repeatable"},
	{"proxy-listen", OPT_LISTEN, 0, 0, 0, IO_LISTEN_SMTP_PROXY,
	 "ADDR:PORT SMTP listener that requires a PROXY v1/v2 header (behind a load balancer)"},
	{"spool", OPT_STR, CF(spool_dir), 1, 4000, 0, "DIR spool directory (default ./var/spool)"},
	{"control-socket", OPT_STR, CF(control_socket), 1, 107, 0,
	 "PATH dotspool-ctl's control socket (default SPOOL/control.sock; dotspool-ctl --socket PATH)"},
	{"accept-domain", OPT_DOMAIN, 0, 0, 0, 0,
	 "D accept mail for D; .D accepts every subdomain; repeatable (default localhost)"},
	{"hostname", OPT_STR, CF(hostname), 1, 255, 0,
	 "NAME our name in the banner and Received: (default: host name)"},
	{"threads", OPT_U32, CF(threads), 1, IO_THREADS_MAX, 0,
	 "N worker threads, one per core (default: cores)"},
	{"max-message-size", OPT_U64, CF(smtp.max_message_size), 1024, 1ull << 40, 0,
	 "BYTES message size limit"},
	{"max-recipients", OPT_U32, CF(smtp.max_recipients), 1, 100000, 0, "N recipients per message"},
	{"max-command-line", OPT_U32, CF(smtp.max_cmd_line), 512, 65536, 0, "BYTES command line incl. CRLF"},
	{"max-text-line", OPT_U32, CF(smtp.max_text_line), 1000, 1 << 20, 0,
	 "BYTES text line in data incl. CRLF"},
	{"max-errors", OPT_U32, CF(smtp.max_errors), 1, 1000, 0, "N consecutive errors before 421"},
	{"max-connections", OPT_U32, CF(max_connections), 1, 1000000, 0, "N connections, whole server"},
	{"max-connections-per-ip", OPT_U32, CF(max_connections_per_ip), 1, 1000000, 0,
	 "N connections per client address"},
	{"timeout-greeting-s", OPT_U32, CF(timeout_greeting_s), 1, 86400, 0, "S wait for a PROXY header"},
	{"timeout-command-s", OPT_U32, CF(timeout_command_s), 1, 86400, 0,
	 "S per command (RFC 5321 4.5.3.2)"},
	{"timeout-data-s", OPT_U32, CF(timeout_data_s), 1, 86400, 0, "S per data block"},
	{"shutdown-timeout-s", OPT_U32, CF(shutdown_timeout_s), 0, 86400, 0,
	 "S on SIGTERM/SIGINT, time for transactions in flight"},
	{"segment-size", OPT_U64, CF(spool.segment_size), SPOOL_SEGMENT_SIZE_MIN, SPOOL_SEGMENT_SIZE_MAX, 0,
	 "BYTES spool segment file size (multiple of 4096)"},
	{"spool-buffer-size", OPT_U32, CF(spool.buffer_size), SPOOL_BUFFER_SIZE_MIN, 1u << 30, 0,
	 "BYTES staging memory per worker lane"},
	{"flushes-in-flight", OPT_U32, CF(spool.flushes_in_flight_max), 1, 16, 0,
	 "N flushes in flight per lane"},
	{"prewrite", OPT_BOOL, CF(spool.prewrite), 0, 1, 0, "BOOL zero-fill segments before use"},
	{"segment-spares", OPT_U32, CF(spool.segment_spares), 1, 64, 0,
	 "N prepared (zero-filled or recycled) segments each lane keeps ready ahead of use; beyond the "
	 "first they are prepared once the lane took none for a second, so a burst of N segments per "
	 "lane writes its data once and never waits for a preparation; each holds segment-size bytes "
	 "of disk (default 1)"},
	{"no-prewrite", OPT_FLAG_NEG, CF(spool.prewrite), 0, 1, 0,
	 "fallocate segments only (for measurements)"},
	/* RFC 1047 synchronization-gap dedup (issue 16; io/gap.h). */
	{"gap-dedup-window-s", OPT_U32, CF(gap_window_s), 0, 30 * 86400, 0,
	 "S a message whose 250 the client never showed it read is at risk for S seconds: a retry with the "
	 "same envelope and bytes (compared with the stored copy) gets '250 already queued as ID' and is not "
	 "stored again; 0 = off (default 86400)"},
	{"gap-dedup-keep-s", OPT_U32, CF(gap_keep_s), 0, 30 * 86400, 0,
	 "S with reclaim on, an at-risk message already delivered keeps its stored copy for the retry's "
	 "byte compare at most S seconds (compaction carries it forward meanwhile); a retry after that is "
	 "stored; 0 = the whole window (default 0)"},
	{"gap-dedup-entries", OPT_U32, CF(gap_entries), 16, IO_GAP_ENTRIES_MAX, 0,
	 "N fingerprints the server-wide gap set holds (192 bytes each); full: new at-risk messages "
	 "are stored as usual and never suppressed against (default 65536)"},
	{"gap-dedup-all", OPT_BOOL, CF(gap_all), 0, 1, 0,
	 "BOOL fingerprint every message, not only at-risk ones, so retries after a sender's own timeout "
	 "are caught too (bounded by gap-dedup-entries, oldest evicted; default false)"},
	{"reclaim", OPT_BOOL, CF(reclaim), 0, 1, 0,
	 "BOOL delete sealed segments once every message in them is final and their records are durable "
	 "(issue 15; spool/FORMAT.md, Reclamation; default true)"},
	{"segment-recycle-max", OPT_U32, CF(segment_recycle_max), 0, 1024, 0,
	 "N with reclaim on, a reclaimed segment is renamed to a free file the lane reuses for its next "
	 "segment (no zero-fill) while the lane has fewer than N free files; 0 = off, segments are "
	 "deleted (spool/FORMAT.md, Recycled segments; default 4)"},
	{"compact-age-s", OPT_U32, CF(compact_age_s), 0, 30 * 86400, 0,
	 "S with reclaim on, a sealed segment older than S whose live messages are few "
	 "(compact-live-max-pct) have them copied forward so it can be reclaimed (spool/FORMAT.md, "
	 "Moved records); 0 = off (default 300)"},
	{"compact-live-max-pct", OPT_U32, CF(compact_live_max_pct), 1, 100, 0,
	 "PCT compact a segment only when its live messages' bodies are at most PCT% of it (default 25)"},
	{"spool-io", OPT_STR, CF(spool.io_mode), 1, 15, 0,
	 "MODE direct (O_DIRECT segments, each group one block-aligned RWF_DSYNC write, default; falls back "
	 "to buffered where O_DIRECT is refused) or buffered (write + fdatasync per group)"},
	/* Back-pressure (issue 15): min/max are the byte range; the N% range is in apply_space(). */
	{"spool-max-bytes", OPT_SPACE, CF(watermark), 1u << 20, 1ull << 62, 0,
	 "SIZE|N% high watermark on the spool's files on disk: above it new transactions get 452 4.3.1 at "
	 "MAIL (those past MAIL finish); accepting again below 90% of it"},
	{"spool-min-free-bytes", OPT_SPACE, CF(watermark), 0, 1ull << 62, 0,
	 "SIZE|N% free-space floor of the spool's file system (statvfs f_bavail): below it new transactions "
	 "get 452 at MAIL; accepting again above 110% of it; 0 = none"},
	{"tls-cert", OPT_STR, CF(tls_cert), 1, 4000, 0,
	 "FILE PEM certificate chain: offer STARTTLS (with --tls-key)"},
	{"tls-key", OPT_STR, CF(tls_key), 1, 4000, 0,
	 "FILE PEM private key of --tls-cert (reloaded on SIGHUP)"},
	{"metrics", OPT_STR, CF(metrics_listen), 1, 79, 0,
	 "ADDR:PORT serve Prometheus metrics at http://ADDR:PORT/metrics (default: off)"},
	{"log-level", OPT_STR, CF(log_level), 1, 15, 0,
	 "LEVEL error, warn, info (a line per accepted message and per refusal), debug (default info)"},
	{"log-buffer-size", OPT_U32, CF(log_ring_size), OBS_LOG_RING_MIN, OBS_LOG_RING_MAX, 0,
	 "BYTES log buffer per worker, a power of 2; lines beyond it are dropped and counted"},
	{"recv-buffers", OPT_U32, CF(recv_buffers), 16, 32768, 0,
	 "N provided receive buffers per worker (power of 2)"},
	{"recv-buffer-size", OPT_U32, CF(recv_buffer_size), 4096, 65536, 0,
	 "BYTES size of each provided receive buffer, a power of 2 (default 16384)"},
	{"pending-input-max", OPT_U32, CF(pending_input_max), 4096, 64 << 20, 0,
	 "BYTES unread input per connection before it stops being read"},
	{"ring-entries", OPT_U32, CF(ring_entries), IO_RING_ENTRIES_MIN, IO_RING_ENTRIES_MAX, 0,
	 "N io_uring submission queue entries per worker (completion queue: at least 16384 and 2 x N)"},
	/* Ingress policy (issue 17): recipient table, throttles per client. */
	{"recipients", OPT_STR, CF(policy.recipients), 1, 4000, 0,
	 "FILE the addresses of the accepted domains, one per line, @domain for a whole domain: others get "
	 "550 5.1.1 at RCPT; reloaded on SIGHUP (default: none, every recipient of an accepted domain)"},
	{"recipients-case-sensitive", OPT_BOOL, CF(policy.recipients_case_sensitive), 0, 1, 0,
	 "BOOL local parts in the recipient table compare exactly (domains never do)"},
	{"client-connection-rate-max", OPT_U32, CF(policy.rate_max[IO_THROTTLE_CONN]), 0, 1000000, 0,
	 "N connections per client per minute, then 421 4.7.0 at connect; 0 = no limit"},
	{"client-message-rate-max", OPT_U32, CF(policy.rate_max[IO_THROTTLE_MSG]), 0, 1000000, 0,
	 "N messages (MAIL) per client per minute, then 450 4.7.1; 0 = no limit"},
	{"client-recipient-rate-max", OPT_U32, CF(policy.rate_max[IO_THROTTLE_RCPT]), 0, 10000000, 0,
	 "N recipients (RCPT) per client per minute, then 450 4.7.1; 0 = no limit"},
	{"session-unknown-recipients-max", OPT_U32, CF(policy.session_unknown_recipients_max), 0, 100000, 0,
	 "N unknown recipients per session, the next one gets 421 4.7.0 and the connection closes; 0 = no "
	 "limit"},
	{"client-ipv6-prefix-length", OPT_U32, CF(policy.client_ipv6_prefix_length), 32, 128, 0,
	 "BITS an IPv6 client is its /BITS for the limits (also --max-connections-per-ip)"},
	{"client-table-size", OPT_U32, CF(policy.client_table_size), IO_THROTTLE_ENTRIES_MIN,
	 IO_THROTTLE_ENTRIES_MAX, 0, "N clients the rate limits remember (fixed memory, ~64 bytes each)"},
	{"trusted-network", OPT_CIDR, 0, 0, 0, 0,
	 "CIDR clients no limit applies to (the recipient table still does), repeatable; 'none' for no "
	 "network (default 127.0.0.0/8 and ::1)"},
	{"verify-recipients", OPT_VDOMAIN, 0, 0, 0, 0,
	 "D ask the first smtp:// or lmtp:// --deliver-to hop about each recipient of D at RCPT "
	 "(MAIL FROM:<>, RCPT, no data): 2xx 250, 5xx 550 5.1.1, else 450 4.1.1; .D for its subdomains; "
	 "repeatable"},
	{"verify-timeout-s", OPT_U32, CF(policy.verify_timeout_s), 1, 3600, 0,
	 "S a verification probe without an answer by then: 450 4.1.1"},
	{"verify-positive-ttl-s", OPT_U32, CF(policy.verify_positive_ttl_s), 0, 30 * 86400, 0,
	 "S how long a recipient the next hop took is remembered (per worker); 0 = never"},
	{"verify-negative-ttl-s", OPT_U32, CF(policy.verify_negative_ttl_s), 0, 30 * 86400, 0,
	 "S how long a recipient the next hop refused is remembered (per worker); 0 = never"},
	{"verify-cache-size", OPT_U32, CF(policy.verify_cache_size), 64, 1u << 24, 0,
	 "N verification answers remembered per worker (fixed memory, 24 bytes each)"},
	/* Delivery to the next hop (issue 14). */
	{"deliver-to", OPT_HOP, 0, 0, 0, 0,
	 "URL next hop: smtp://IP:PORT, lmtp://IP:PORT, lmtp:/UNIX/SOCKET, pipe:/PROGRAM or "
	 "amqp://USER:PASS@IP:PORT/VHOST?exchange=E&routing_key=K (doc/amqp.md); IPv6 as "
	 "[::1]; repeatable (fallbacks, tried in order; amqp: nodes of one cluster), at most 8 "
	 "(default: none, spool only)"},
	{"deliver-connections", OPT_U32, CF(deliver.connections_max), 1, 10000, 0,
	 "N connections to next hops, whole server"},
	{"deliver-starttls", OPT_CHOICE, CF(deliver.starttls), 0, 0, 0,
	 "MODE never, opportunistic (when offered; a certificate that does not verify is only logged) or "
	 "required (offered and verified, else deferred)"},
	{"deliver-ca", OPT_STR, CF(deliver.ca_file), 1, 4000, 0,
	 "FILE PEM CA certificates the next hop's chain is verified against (required: "
	 "default " DAEMON_SYSTEM_CA ")"},
	{"deliver-tls-name", OPT_STR, CF(deliver.tls_name), 1, 253, 0,
	 "NAME DNS name the next hop's certificate must carry (default: chain verified only)"},
	{"retry-min-s", OPT_U32, CF(deliver.retry_min_s), 1, 86400, 0,
	 "S first wait before retrying a deferred message (doubles per attempt, jittered)"},
	{"retry-max-s", OPT_U32, CF(deliver.retry_max_s), 1, DELIVER_RETRY_MAX_S, 0,
	 "S longest wait between attempts (at least retry-min-s)"},
	{"queue-lifetime-s", OPT_U32, CF(deliver.queue_lifetime_s), 1, DELIVER_LIFETIME_MAX_S, 0,
	 "S a message older than this fails its remaining recipients (bounce)"},
	{"deliver-hop-backoff-min-s", OPT_U32, CF(deliver.hop_backoff_min_s), 1, 86400, 0,
	 "S a next hop that refused or timed out is left alone this long, doubling up to retry-max-s "
	 "[default min(retry-min-s, 60)]"},
	{"deliver-timeout-connect-s", OPT_U32, CF(deliver.timeout_connect_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S connecting to a next hop"},
	{"deliver-timeout-greeting-s", OPT_U32, CF(deliver.timeout_greeting_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S waiting for the next hop's 220 (RFC 5321 4.5.3.2)"},
	{"deliver-timeout-command-s", OPT_U32, CF(deliver.timeout_command_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S reply to EHLO/LHLO, STARTTLS, MAIL, RCPT, RSET, QUIT"},
	{"deliver-timeout-data-init-s", OPT_U32, CF(deliver.timeout_data_init_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S reply to DATA"},
	{"deliver-timeout-data-block-s", OPT_U32, CF(deliver.timeout_data_block_s), 1, DELIVER_TIMEOUT_MAX_S,
	 0, "S each send of message data must progress within it"},
	{"deliver-timeout-data-done-s", OPT_U32, CF(deliver.timeout_data_done_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S reply(s) to the final dot"},
	{"deliver-timeout-pipe-s", OPT_U32, CF(deliver.timeout_pipe_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S run time of a pipe: program before it is killed (deferred)"},
	/* amqp:// (issue 18, io/dlv_amqp.c, doc/amqp.md) */
	{"deliver-credentials", OPT_STR, CF(deliver.credentials_file), 1, 4000, 0,
	 "FILE amqp:// user:password on one line (mode 0600 or stricter) instead of in the URL"},
	{"amqp-window", OPT_U32, CF(deliver.amqp_window), 1, 65536, 0,
	 "N amqp:// publishes awaiting the broker's confirm, per worker"},
	{"deliver-timeout-confirm-s", OPT_U32, CF(deliver.timeout_confirm_s), 1, DELIVER_TIMEOUT_MAX_S, 0,
	 "S amqp:// publish to the broker's confirm; later: deferred (tried again)"},
	{"amqp-max-message-size", OPT_U64, CF(deliver.amqp_max_message_bytes), 4096, 512ull << 20, 0,
	 "BYTES the broker's max_message_size (RabbitMQ 3.10: 128 MiB); max-message-size must fit"},
};

/*
 * Options that no longer do anything. Still accepted, as a flag and as a
 * key, so that existing configurations load; each use prints a warning.
 * Not in --help nor in dist/dotspool.conf.
 */
static const struct {
	const char *name;
	const char *why;
} obsolete_opts[] = {
	{"timeout-commit-s", "a commit is never abandoned (see dist/README.md)"},
};

static const char *obsolete_why(const char *name)
{
	for (size_t i = 0; i < DS_ARRAY_SIZE(obsolete_opts); i++)
		if (!strcmp(obsolete_opts[i].name, name))
			return obsolete_opts[i].why;
	return NULL;
}

static int fail(char *err, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, cap, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/*
 * Delivery defaults: Postfix's where it has one (qmgr's minimal/maximal
 * backoff 300/4000 s, 5 days' queue lifetime, smtp_tls_security_level
 * may; the RFC 5321 4.5.3.2 client timeouts, which Postfix also uses).
 * hop_backoff_min_s 0 = "min(retry-min-s, 60)", settled by
 * daemon_config_finish() once retry-min-s is known.
 */
static void deliver_config_defaults(struct io_deliver_config *d)
{
	memset(d, 0, sizeof(*d));
	d->connections_max = 64;
	d->starttls = IO_DELIVER_STARTTLS_OPPORTUNISTIC;
	d->retry_min_s = 300;
	d->retry_max_s = 4000;
	d->queue_lifetime_s = 5 * 86400;
	d->timeout_connect_s = 30;
	d->timeout_greeting_s = 300;
	d->timeout_command_s = 300;
	d->timeout_data_init_s = 120;
	d->timeout_data_block_s = 180;
	d->timeout_data_done_s = 600;
	d->timeout_pipe_s = 600;
	d->hop_backoff_min_s = 0;
	d->amqp_window = 256;
	d->timeout_confirm_s = 30;
	d->amqp_max_message_bytes = 128ull << 20; /* RabbitMQ 3.10's default max_message_size */
}

/*
 * Ingress policy defaults (issue 17). Rates per client per minute, well
 * above what one legitimate MTA sends through one address but far below a
 * dictionary attack or a spam run; loopback is trusted (local
 * submission, the benchmarks, health checks), as in Postfix's mynetworks.
 */
static void policy_config_defaults(struct io_policy_config *p)
{
	memset(p, 0, sizeof(*p));
	p->rate_max[IO_THROTTLE_CONN] = 600;
	p->rate_max[IO_THROTTLE_MSG] = 1200;
	p->rate_max[IO_THROTTLE_RCPT] = 6000;
	p->session_unknown_recipients_max = 20;
	p->client_ipv6_prefix_length = 64;
	p->client_table_size = 1u << 16;
	int r4 = io_cidr_parse("127.0.0.0/8", &p->trusted[0]);
	int r6 = io_cidr_parse("::1", &p->trusted[1]);
	DS_ASSERT(r4 == 0 && r6 == 0);
	p->trusted_count = 2;
	p->verify_timeout_s = 10;
	p->verify_positive_ttl_s = 3600;
	p->verify_negative_ttl_s = 600;
	p->verify_cache_size = 65536;
}

void daemon_config_defaults(struct io_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	smtp_config_defaults(&cfg->smtp);
	spool_config_defaults(&cfg->spool);
	/*
	 * The daemon writes its spool with O_DIRECT by default (issue 19: chosen by
	 * measurement, README "Results"); the library's default stays buffered for
	 * the simulators. Falls back to buffered where O_DIRECT is refused.
	 */
	cfg->spool.io_mode = SPOOL_IO_DIRECT;
	snprintf(cfg->spool_dir, sizeof(cfg->spool_dir), "./var/spool");
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	cfg->threads = n > 0 ? (uint32_t)DS_MIN(n, IO_THREADS_MAX) : 1;
	cfg->max_connections = 16384;
	cfg->max_connections_per_ip = 16384;
	cfg->timeout_greeting_s = 30;
	cfg->timeout_command_s = 300;
	cfg->timeout_data_s = 180;
	cfg->shutdown_timeout_s = 10;
	cfg->recv_buffers = 1024;
	/*
	 * 16 KiB: a recv completion of a large body carries 4 times the bytes of
	 * a 4 KiB buffer, so the session, the data scan and the spool's chunk
	 * records run a quarter as often (mix load, tmpfs: about 8% less server
	 * CPU per message). 16 MiB per worker with the default count.
	 */
	cfg->recv_buffer_size = 16384;
	cfg->pending_input_max = 64 * 1024;
	cfg->ring_entries = 2048;
	snprintf(cfg->log_level, sizeof(cfg->log_level), "info");
	cfg->log_ring_size = 1u << 20;
	deliver_config_defaults(&cfg->deliver);
	cfg->watermark.max_pct = IO_WATERMARK_MAX_PCT_DEFAULT;
	cfg->watermark.min_free_auto = true;
	cfg->gap_window_s = 86400;
	cfg->gap_keep_s = 0; /* the window: compaction carries kept messages forward (issue 16) */
	cfg->gap_entries = IO_GAP_ENTRIES_DEFAULT;
	/*
	 * Reclamation on (issue 15 point 4: proven by the crash simulator and the power-cut
	 * tests, with compaction too); --reclaim false keeps every segment.
	 */
	cfg->reclaim = true;
	/* Compaction (issue 15): a segment idle for 5 minutes and at most a quarter live. */
	cfg->compact_age_s = 300;
	cfg->segment_recycle_max = 4;
	cfg->compact_live_max_pct = 25;
	policy_config_defaults(&cfg->policy);
}

/* IP:PORT or [IPv6]:PORT, literal addresses only. */
static int parse_addr(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[256];
	const char *port;
	memset(ss, 0, sizeof(*ss));
	if (text[0] == '[') {
		const char *end = strchr(text, ']');
		if (!end || end[1] != ':' || (size_t)(end - text - 1) >= sizeof(host))
			return -EINVAL;
		memcpy(host, text + 1, (size_t)(end - text - 1));
		host[end - text - 1] = 0;
		port = end + 2;
	} else {
		const char *colon = strrchr(text, ':');
		if (!colon || (size_t)(colon - text) >= sizeof(host))
			return -EINVAL;
		memcpy(host, text, (size_t)(colon - text));
		host[colon - text] = 0;
		port = colon + 1;
	}
	char *e;
	unsigned long p = strtoul(port, &e, 10);
	if (*port == 0 || *e || p > 65535)
		return -EINVAL;
	struct sockaddr_in *in = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	/* Literal addresses only: dotspool makes no DNS lookups. */
	if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)p);
		*len = sizeof(*in);
		return 0;
	}
	if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		*len = sizeof(*in6);
		return 0;
	}
	return -EINVAL;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *e;
	errno = 0;
	if (*s == 0 || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	unsigned long long v = strtoull(s, &e, 10);
	if (errno)
		return -EINVAL;
	unsigned shift = 0;
	if (*e == 'K' || *e == 'k')
		shift = 10, e++;
	else if (*e == 'M' || *e == 'm')
		shift = 20, e++;
	else if (*e == 'G' || *e == 'g')
		shift = 30, e++;
	if (*e || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
		*out = true;
	else if (!strcasecmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "no") ||
		 !strcasecmp(s, "off"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static const struct opt_def *opt_find(const char *name)
{
	for (size_t i = 0; i < DS_ARRAY_SIZE(opts); i++)
		if (!strcmp(opts[i].name, name))
			return &opts[i];
	return NULL;
}

bool daemon_option_takes_value(const char *name)
{
	const struct opt_def *d = opt_find(name);
	return (d && d->kind != OPT_FLAG_NEG) || obsolete_why(name);
}

bool daemon_option_known(const char *name)
{
	return opt_find(name) != NULL || obsolete_why(name) != NULL;
}

void daemon_config_begin_source(struct io_config *cfg)
{
	/* A new source (the command line after the file) replaces lists rather than extending them. */
	cfg->listen_from_source = false;
	cfg->domains_from_source = false;
	cfg->deliver.hops_from_source = false;
	cfg->policy.trusted_from_source = false;
	cfg->policy.verify_from_source = false;
}

/* OPT_U32, OPT_U64: a number in the option's range, with its further rules. */
static int apply_number(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	const char *name = d->name;
	uint8_t *base = (uint8_t *)cfg;
	uint64_t v;
	if (parse_u64(value, &v) < 0 || v < d->min || v > d->max)
		return fail(err, errcap, "'%s': '%s' is not a number in [%llu, %llu]", name, value,
			    (unsigned long long)d->min, (unsigned long long)d->max);
	if ((!strcmp(name, "recv-buffers") || !strcmp(name, "recv-buffer-size") ||
	     !strcmp(name, "log-buffer-size")) &&
	    (v & (v - 1)))
		return fail(err, errcap, "'%s': '%s' is not a power of 2", name, value);
	if (!strcmp(name, "segment-size") && (v & 4095))
		return fail(err, errcap, "'%s': '%s' is not a multiple of 4096", name, value);
	if (d->kind == OPT_U32)
		*(uint32_t *)(base + d->off) = (uint32_t)v;
	else
		*(uint64_t *)(base + d->off) = v;
	return 0;
}

/*
 * --deliver-ca: a readable regular file with a PEM certificate near its
 * start (looked for in the first 64 KiB: a bundle starts with one, and a
 * key or a DER file given by mistake is caught here, not at the first
 * STARTTLS).
 */
static int check_ca_file(const char *path, char *err, size_t errcap)
{
	static const char marker[] = "-----BEGIN CERTIFICATE-----";
	char buf[64 * 1024 + 1];
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(err, errcap, "'deliver-ca': %s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return fail(err, errcap, "'deliver-ca': %s is not a regular file", path);
	}
	size_t got = 0;
	while (got < sizeof(buf) - 1) {
		ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			close(fd);
			return fail(err, errcap, "'deliver-ca': %s: %s", path, strerror(e));
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	buf[got] = 0;
	for (size_t i = 0; i < got; i++)
		if (!buf[i])
			buf[i] = ' '; /* strstr past binary bytes */
	if (!strstr(buf, marker))
		return fail(err, errcap, "'deliver-ca': %s has no PEM certificate (%s) in its first 64 KiB",
			    path, marker);
	return 0;
}

/*
 * --deliver-tls-name: a DNS name (letters, digits, dashes; labels of 1..63
 * joined by dots). Not an IP address: Debian's mbedTLS 2.28 matches DNS
 * names only, so an address here could never match.
 */
static int check_dns_name(const char *name, char *err, size_t errcap)
{
	struct in6_addr a6;
	struct in_addr a4;
	if (inet_pton(AF_INET, name, &a4) == 1 || inet_pton(AF_INET6, name, &a6) == 1)
		return fail(err, errcap,
			    "'deliver-tls-name': '%s' is an IP address; give the DNS name the certificate "
			    "carries "
			    "(mbedTLS 2.28 matches DNS names only)",
			    name);
	size_t label = 0;
	for (const char *p = name;; p++) {
		char c = *p;
		if (c == '.' || c == 0) {
			if (label == 0 || label > 63 || p[-1] == '-')
				break;
			if (c == 0)
				return 0;
			label = 0;
			continue;
		}
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  (c == '-' && label > 0);
		if (!ok)
			break;
		label++;
	}
	return fail(err, errcap,
		    "'deliver-tls-name': '%s' is not a DNS name (labels of letters, digits, '-')", name);
}

/*
 * --deliver-credentials: "user:password" on the first line of a regular
 * file nobody but its owner may read or write (a password in a URL shows
 * in ps and in the config file; this one only in memory).
 */
static int read_credentials(struct io_config *cfg, const char *path, char *err, size_t errcap)
{
	struct io_deliver_config *d = &cfg->deliver;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return fail(err, errcap, "'deliver-credentials': %s: %s", path, strerror(errno));
	struct stat st;
	char buf[512];
	ssize_t n = -1;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && !(st.st_mode & 077))
		n = read(fd, buf, sizeof(buf) - 1);
	int e = errno;
	close(fd);
	if (!S_ISREG(st.st_mode))
		return fail(err, errcap, "'deliver-credentials': %s is not a regular file", path);
	if (st.st_mode & 077)
		return fail(err, errcap,
			    "'deliver-credentials': %s has mode %04o: group and others must have no access "
			    "(chmod 600)",
			    path, (unsigned)(st.st_mode & 07777));
	if (n < 0)
		return fail(err, errcap, "'deliver-credentials': %s: %s", path, strerror(e));
	buf[n] = 0;
	buf[strcspn(buf, "\r\n")] = 0;
	char *colon = strchr(buf, ':');
	if (!colon || colon == buf || (size_t)(colon - buf) >= sizeof(d->amqp_user) ||
	    strlen(colon + 1) >= sizeof(d->amqp_pass))
		return fail(err, errcap,
			    "'deliver-credentials': %s: want USER:PASSWORD on the first line (user < 128, "
			    "password < 128 bytes)",
			    path);
	*colon = 0;
	memcpy(d->amqp_user, buf, (size_t)(colon - buf) + 1);
	memcpy(d->amqp_pass, colon + 1, strlen(colon + 1) + 1);
	explicit_bzero(buf, sizeof(buf));
	return 0;
}

/* OPT_STR: a word, checked by what it names (an address, a write mode, a log level). */
static int apply_string(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	const char *name = d->name;
	uint8_t *base = (uint8_t *)cfg;
	size_t n = strlen(value);
	if (n < d->min || n > d->max || strpbrk(value, " \t\r\n"))
		return fail(err, errcap, "'%s': bad value '%s' (1..%llu characters, no spaces)", name, value,
			    (unsigned long long)d->max);
	if (!strcmp(name, "metrics") && parse_addr(value, &cfg->metrics_addr, &cfg->metrics_addr_len) < 0)
		return fail(err, errcap, "'%s': bad address '%s' (want IP:PORT or [IPv6]:PORT)", name, value);
	if (!strcmp(name, "spool-io")) {
		/* Not a string field: the spool's write mode. */
		enum spool_io_mode *mode = (enum spool_io_mode *)(base + d->off);
		if (!strcmp(value, "buffered"))
			*mode = SPOOL_IO_BUFFERED;
		else if (!strcmp(value, "direct"))
			*mode = SPOOL_IO_DIRECT;
		else
			return fail(err, errcap, "'%s': '%s' is not one of buffered, direct", name, value);
		return 0;
	}
	if (!strcmp(name, "deliver-ca") && check_ca_file(value, err, errcap) < 0)
		return -EINVAL;
	if (!strcmp(name, "deliver-tls-name") && check_dns_name(value, err, errcap) < 0)
		return -EINVAL;
	if (!strcmp(name, "deliver-credentials") && read_credentials(cfg, value, err, errcap) < 0)
		return -EINVAL;
	enum obs_log_level lvl;
	if (!strcmp(name, "log-level") && obs_log_level_parse(value, &lvl) < 0)
		return fail(err, errcap, "'%s': '%s' is not one of error, warn, info, debug", name, value);
	memcpy(base + d->off, value, n + 1);
	return 0;
}

/* A list option (listeners, domains): the first item of a source replaces the earlier source's. */
static void list_from_source(bool *from_source, uint32_t *count)
{
	if (!*from_source) {
		*count = 0;
		*from_source = true;
	}
}

/* OPT_LISTEN: one more listener. */
static int apply_listen(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	list_from_source(&cfg->listen_from_source, &cfg->listen_count);
	if (cfg->listen_count >= IO_LISTEN_MAX)
		return fail(err, errcap, "at most %d listeners", IO_LISTEN_MAX);
	struct io_listen_spec *l = &cfg->listen[cfg->listen_count];
	if (strlen(value) >= sizeof(l->text) || parse_addr(value, &l->addr, &l->addr_len) < 0)
		return fail(err, errcap, "'%s': bad address '%s' (want IP:PORT or [IPv6]:PORT)", d->name,
			    value);
	l->kind = (enum io_listen_kind)d->listen_kind;
	snprintf(l->text, sizeof(l->text), "%s", value);
	cfg->listen_count++;
	return 0;
}

/* OPT_DOMAIN: one more accepted domain. */
static int apply_domain(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	list_from_source(&cfg->domains_from_source, &cfg->accept_domain_count);
	size_t n = strlen(value);
	if (n == 0 || n > 255 || strpbrk(value, " \t\r\n@[]<>"))
		return fail(err, errcap, "'%s': bad domain '%s'", d->name, value);
	if (cfg->accept_domain_count >= IO_DOMAIN_MAX)
		return fail(err, errcap, "at most %d accepted domains", IO_DOMAIN_MAX);
	char *copy = strdup(value);
	if (!copy)
		return fail(err, errcap, "out of memory");
	cfg->accept_domains[cfg->accept_domain_count++] = copy;
	return 0;
}

/*
 * OPT_HOP: one more next hop (--deliver-to), kept in the order given. amqp://
 * (issue 18) is per message and never a fallback of smtp/lmtp/pipe hops or
 * the other way round; several amqp:// URLs are nodes of one cluster, tried
 * in order by each worker's hand-off thread (io/dlv_amqp.c).
 */
static int apply_hop(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
		     size_t errcap)
{
	struct io_deliver_config *dc = &cfg->deliver;
	struct io_hop_spec hop;
	char msg[400];
	list_from_source(&dc->hops_from_source, &dc->hop_count);
	if (dc->hop_count >= IO_DELIVER_HOPS_MAX)
		return fail(err, errcap, "'%s': at most %d next hops", d->name, IO_DELIVER_HOPS_MAX);
	if (daemon_hop_parse(value, &hop, msg, sizeof(msg)) < 0)
		return fail(err, errcap, "'%s': %s", d->name, msg);
	for (uint32_t i = 0; i < dc->hop_count; i++) {
		if (!strcmp(dc->hop[i].text, hop.text))
			return fail(err, errcap, "'%s': '%s' is given twice", d->name, value);
		if ((dc->hop[i].kind == IO_HOP_AMQP) != (hop.kind == IO_HOP_AMQP))
			return fail(
				err, errcap,
				"'%s': '%s': amqp:// is per message and is not mixed with smtp, lmtp or pipe "
				"hops",
				d->name, value);
	}
	dc->hop[dc->hop_count++] = hop;
	return 0;
}

/* OPT_CIDR: one more trusted network; "none" empties the list. */
static int apply_cidr(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
		      size_t errcap)
{
	struct io_policy_config *p = &cfg->policy;
	list_from_source(&p->trusted_from_source, &p->trusted_count);
	if (!strcmp(value, "none"))
		return 0;
	if (p->trusted_count >= IO_TRUSTED_MAX)
		return fail(err, errcap, "'%s': at most %d networks", d->name, IO_TRUSTED_MAX);
	if (io_cidr_parse(value, &p->trusted[p->trusted_count]) < 0)
		return fail(err, errcap, "'%s': '%s' is not ADDR/BITS (e.g. 192.0.2.0/24, 2001:db8::/32)",
			    d->name, value);
	p->trusted_count++;
	return 0;
}

/* OPT_VDOMAIN: one more domain whose recipients the next hop verifies. */
static int apply_vdomain(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			 size_t errcap)
{
	struct io_policy_config *p = &cfg->policy;
	list_from_source(&p->verify_from_source, &p->verify_domain_count);
	size_t n = strlen(value);
	if (n == 0 || n > 255 || strpbrk(value, " \t\r\n@[]<>") || !strcmp(value, "."))
		return fail(err, errcap, "'%s': bad domain '%s'", d->name, value);
	if (p->verify_domain_count >= IO_VERIFY_DOMAINS_MAX)
		return fail(err, errcap, "'%s': at most %d domains", d->name, IO_VERIFY_DOMAINS_MAX);
	memcpy(p->verify_domains[p->verify_domain_count++], value, n + 1);
	return 0;
}

/* The words of an OPT_CHOICE option, NULL-terminated. */
static const char *const *opt_choices(const struct opt_def *d)
{
	DS_ASSERT(d->kind == OPT_CHOICE && !strcmp(d->name, "deliver-starttls"));
	return starttls_words;
}

/* OPT_CHOICE: one of the option's words, stored as its index. */
static int apply_choice(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
			size_t errcap)
{
	const char *const *choices = opt_choices(d);
	char words[128] = "";
	for (uint32_t i = 0; choices[i]; i++) {
		if (!strcmp(choices[i], value)) {
			*(uint32_t *)((uint8_t *)cfg + d->off) = i;
			return 0;
		}
		snprintf(words + strlen(words), sizeof(words) - strlen(words), "%s%s", i ? ", " : "",
			 choices[i]);
	}
	return fail(err, errcap, "'%s': '%s' is not one of %s", d->name, value, words);
}

/*
 * OPT_SPACE: SIZE (bytes, K/M/G suffixes) in the option's range, or N% of
 * the spool's file system: 1..100 for spool-max-bytes, 0..50 for
 * spool-min-free-bytes (a floor above half the disk is a mistake).
 */
static int apply_space(struct io_config *cfg, const struct opt_def *d, const char *value, char *err,
		       size_t errcap)
{
	struct io_watermark_config *w = &cfg->watermark;
	bool is_max = !strcmp(d->name, "spool-max-bytes");
	uint32_t pct_min = is_max ? 1 : 0, pct_max = is_max ? 100 : 50;
	size_t n = strlen(value);
	uint64_t bytes = 0, pct = 0;
	if (n > 1 && value[n - 1] == '%') {
		char num[16];
		if (n - 1 >= sizeof(num))
			return fail(err, errcap, "'%s': '%s' is not a percentage in [%u, %u]", d->name, value,
				    pct_min, pct_max);
		memcpy(num, value, n - 1);
		num[n - 1] = 0;
		if (num[strspn(num, "0123456789")] || parse_u64(num, &pct) < 0 || pct < pct_min ||
		    pct > pct_max)
			return fail(err, errcap, "'%s': '%s' is not a percentage in [%u, %u]", d->name, value,
				    pct_min, pct_max);
	} else if (parse_u64(value, &bytes) < 0 || bytes < d->min || bytes > d->max) {
		return fail(err, errcap, "'%s': '%s' is neither a size in [%llu, %llu] nor a percentage N%%",
			    d->name, value, (unsigned long long)d->min, (unsigned long long)d->max);
	}
	if (is_max) {
		w->max_bytes = bytes;
		w->max_pct = (uint32_t)pct;
	} else {
		w->min_free_bytes = bytes;
		w->min_free_pct = (uint32_t)pct;
		w->min_free_auto = false;
	}
	return 0;
}

int daemon_option_apply(struct io_config *cfg, const char *name, const char *value, char *err, size_t errcap)
{
	const struct opt_def *d = opt_find(name);
	const char *why = obsolete_why(name);
	if (why) {
		if (!value)
			return fail(err, errcap, "'%s' needs a value", name);
		fprintf(stderr, "dotspool: %s is obsolete and ignored: %s\n", name, why);
		return 0;
	}
	if (!d)
		return fail(err, errcap, "unknown option '%s'", name);
	if (d->kind != OPT_FLAG_NEG && !value)
		return fail(err, errcap, "'%s' needs a value", name);
	bool *flag = (bool *)((uint8_t *)cfg + d->off);
	switch (d->kind) {
	case OPT_U32:
	case OPT_U64:
		return apply_number(cfg, d, value, err, errcap);
	case OPT_BOOL:
		if (parse_bool(value, flag) < 0)
			return fail(err, errcap, "'%s': '%s' is not a boolean (true/false)", name, value);
		return 0;
	case OPT_FLAG_NEG:
		*flag = false;
		return 0;
	case OPT_STR:
		return apply_string(cfg, d, value, err, errcap);
	case OPT_LISTEN:
		return apply_listen(cfg, d, value, err, errcap);
	case OPT_DOMAIN:
		return apply_domain(cfg, d, value, err, errcap);
	case OPT_HOP:
		return apply_hop(cfg, d, value, err, errcap);
	case OPT_CHOICE:
		return apply_choice(cfg, d, value, err, errcap);
	case OPT_SPACE:
		return apply_space(cfg, d, value, err, errcap);
	case OPT_CIDR:
		return apply_cidr(cfg, d, value, err, errcap);
	case OPT_VDOMAIN:
		return apply_vdomain(cfg, d, value, err, errcap);
	}
	return fail(err, errcap, "internal: bad option kind");
}

/* Delivery: the derived default, the rules between keys, the CA that required needs. */
static int deliver_finish(struct io_deliver_config *d, char *err, size_t errcap)
{
	if (d->retry_max_s < d->retry_min_s)
		return fail(err, errcap, "retry-max-s (%u) must be at least retry-min-s (%u)", d->retry_max_s,
			    d->retry_min_s);
	if (d->hop_backoff_min_s == 0)
		d->hop_backoff_min_s = DS_MIN(d->retry_min_s, 60u);
	if (d->hop_backoff_min_s > d->retry_max_s)
		return fail(err, errcap, "deliver-hop-backoff-min-s (%u) must not exceed retry-max-s (%u)",
			    d->hop_backoff_min_s, d->retry_max_s);
	if (d->starttls == IO_DELIVER_STARTTLS_NEVER && (d->ca_file[0] || d->tls_name[0]))
		return fail(err, errcap,
			    "deliver-ca and deliver-tls-name have no effect with deliver-starttls never");
	if (d->starttls == IO_DELIVER_STARTTLS_REQUIRED && !d->ca_file[0]) {
		if (access(DAEMON_SYSTEM_CA, R_OK) < 0)
			return fail(err, errcap,
				    "deliver-starttls required needs CA certificates: give deliver-ca FILE "
				    "(%s: %s)",
				    DAEMON_SYSTEM_CA, strerror(errno));
		snprintf(d->ca_file, sizeof(d->ca_file), "%s", DAEMON_SYSTEM_CA);
	}
	return 0;
}

/*
 * amqp:// (issue 18): credentials from the URL or the file, not both, and
 * every message we may accept must fit the broker's max_message_size (it
 * would be refused forever: the configuration is refused instead, see
 * doc/amqp.md). The stored message is the data plus our Received: header.
 */
#define AMQP_HEADER_SLACK_BYTES (64u * 1024)
static int amqp_finish(struct io_config *cfg, char *err, size_t errcap)
{
	struct io_deliver_config *d = &cfg->deliver;
	bool amqp = d->hop_count && d->hop[0].kind == IO_HOP_AMQP;
	if (!amqp) {
		if (d->credentials_file[0])
			return fail(err, errcap, "deliver-credentials is for amqp:// next hops only");
		return 0;
	}
	for (uint32_t i = 0; i < d->hop_count; i++) {
		bool url = d->hop[i].amqp.user[0] != 0;
		if (url && d->credentials_file[0])
			return fail(
				err, errcap,
				"'%s': credentials in the URL and in deliver-credentials: give them in one "
				"place",
				d->hop[i].text);
		if (!url && !d->credentials_file[0])
			return fail(
				err, errcap,
				"'%s': no credentials: amqp://USER:PASSWORD@... or deliver-credentials FILE",
				d->hop[i].text);
	}
	if (cfg->smtp.max_message_size + AMQP_HEADER_SLACK_BYTES > d->amqp_max_message_bytes)
		return fail(err, errcap,
			    "max-message-size (%llu) + 64 KiB of trace header must fit the broker's "
			    "max_message_size, amqp-max-message-size (%llu): lower max-message-size or raise "
			    "both (RabbitMQ's max_message_size, at most 512 MiB)",
			    (unsigned long long)cfg->smtp.max_message_size,
			    (unsigned long long)d->amqp_max_message_bytes);
	return 0;
}

int daemon_config_finish(struct io_config *cfg, char *err, size_t errcap)
{
	if (cfg->listen_count == 0) {
		bool saved = cfg->listen_from_source;
		int ret = daemon_option_apply(cfg, "listen", "127.0.0.1:2525", err, errcap);
		cfg->listen_from_source = saved;
		if (ret < 0)
			return ret;
	}
	if (cfg->accept_domain_count == 0)
		cfg->accept_domains[cfg->accept_domain_count++] = "localhost";
	if (!cfg->hostname[0] && gethostname(cfg->hostname, sizeof(cfg->hostname) - 1) < 0)
		snprintf(cfg->hostname, sizeof(cfg->hostname), "localhost");
	if (cfg->spool.segment_size < 4 * (uint64_t)cfg->spool.buffer_size)
		return fail(err, errcap, "segment-size must be at least 4 x spool-buffer-size");
	if (!cfg->tls_cert[0] != !cfg->tls_key[0])
		return fail(err, errcap, "tls-cert and tls-key go together: set both or neither");
	/*
	 * Each lane holds its active segment and the next one its spare thread
	 * prepared: a limit below that would refuse mail on an empty spool.
	 */
	uint64_t lanes_min = 2ull * cfg->threads * cfg->spool.segment_size;
	if (cfg->watermark.max_bytes && cfg->watermark.max_bytes < lanes_min)
		return fail(err, errcap,
			    "spool-max-bytes (%llu) must be at least 2 x threads x segment-size (%llu): each "
			    "lane holds its active segment and the next one",
			    (unsigned long long)cfg->watermark.max_bytes, (unsigned long long)lanes_min);
	int ret = deliver_finish(&cfg->deliver, err, errcap);
	if (ret < 0)
		return ret;
	if (cfg->policy.verify_domain_count) {
		bool hop = false;
		for (uint32_t i = 0; i < cfg->deliver.hop_count; i++)
			hop |= cfg->deliver.hop[i].kind == IO_HOP_SMTP ||
			       cfg->deliver.hop[i].kind == IO_HOP_LMTP;
		if (!hop)
			return fail(err, errcap,
				    "verify-recipients needs an smtp:// or lmtp:// deliver-to hop to ask");
	}
	ret = amqp_finish(cfg, err, errcap);
	if (ret < 0)
		return ret;
	cfg->smtp.tls_available = cfg->tls_cert[0] != 0;
	cfg->smtp.hostname = cfg->hostname;
	cfg->smtp.accept_domains = cfg->accept_domains;
	cfg->smtp.accept_domain_count = cfg->accept_domain_count;
	cfg->spool.dir = cfg->spool_dir;
	return 0;
}

/*
 * The help text already names this default ("(default 86400)" or "; default
 * false)" for " [default 86400]"): print it once. A text whose default differs
 * from the real one still gets the bracket, so the drift shows.
 */
static bool help_says_default(const char *help, const char *bracket)
{
	char says[80];

	if (!bracket[0])
		return false;
	/* " [default X]" -> "default X)" */
	snprintf(says, sizeof(says), "%.*s)", (int)strlen(bracket) - 3, bracket + 2);
	return strstr(help, says) != NULL;
}

void daemon_options_usage(FILE *f)
{
	struct io_config d;
	daemon_config_defaults(&d);
	fprintf(f, "Usage: dotspool [--config FILE] [OPTIONS]\n"
		   "       dotspool --check-config FILE\n"
		   "SMTP/LMTP ingest server: answers the final dot with 250 once the message is durable.\n"
		   "Every option is also a key of the configuration file (name = value); the command line\n"
		   "overrides the file. IPv6 addresses as [::1]:2525.\n\n");
	for (size_t i = 0; i < DS_ARRAY_SIZE(opts); i++) {
		const struct opt_def *o = &opts[i];
		char def[64] = "";
		const uint8_t *base = (const uint8_t *)&d;
		/* A default below the range is derived from other keys: the help text says how. */
		if (o->kind == OPT_U32 && *(const uint32_t *)(base + o->off) >= o->min)
			snprintf(def, sizeof(def), " [default %u]", *(const uint32_t *)(base + o->off));
		else if (o->kind == OPT_CHOICE)
			snprintf(def, sizeof(def), " [default %s]",
				 opt_choices(o)[*(const uint32_t *)(base + o->off)]);
		else if (o->kind == OPT_U64)
			snprintf(def, sizeof(def), " [default %llu]",
				 (unsigned long long)*(const uint64_t *)(base + o->off));
		else if (o->kind == OPT_BOOL)
			snprintf(def, sizeof(def), " [default %s]",
				 *(const bool *)(base + o->off) ? "true" : "false");
		else if (o->kind == OPT_SPACE && !strcmp(o->name, "spool-max-bytes"))
			snprintf(def, sizeof(def), " [default %u%%]", d.watermark.max_pct);
		else if (o->kind == OPT_SPACE)
			snprintf(def, sizeof(def), " [default min(1G, %u%%)]",
				 IO_WATERMARK_FLOOR_PCT_DEFAULT);
		fprintf(f, "  --%-30s %s%s\n", o->name, o->help, help_says_default(o->help, def) ? "" : def);
	}
	fprintf(f, "  --%-30s %s\n", "config FILE", "read settings from an INI file first");
	fprintf(f, "  --%-30s %s\n", "check-config FILE",
		"validate FILE, print the error (file:line: key), exit 0/1");
	fprintf(f, "  --%-30s %s\n", "help, --version", "");
	fprintf(f, "\nSizes accept K, M, G suffixes. Signals: SIGTERM/SIGINT stop gracefully.\n");
}

void daemon_config_print_deliver(FILE *f, const struct io_config *cfg)
{
	const struct io_deliver_config *d = &cfg->deliver;
	char desc[600];
	if (d->hop_count == 0)
		return;
	DS_ASSERT(d->starttls < DS_ARRAY_SIZE(starttls_words) - 1);
	for (uint32_t i = 0; i < d->hop_count; i++) {
		daemon_hop_describe(&d->hop[i], desc, sizeof(desc));
		fprintf(f, "dotspool: deliver-to %u: %s %s\n", i + 1, d->hop[i].text, desc);
	}
	fprintf(f,
		"dotspool: deliver: deliver-connections=%u deliver-starttls=%s deliver-ca=%s "
		"deliver-tls-name=%s "
		"retry-min-s=%u retry-max-s=%u queue-lifetime-s=%u deliver-hop-backoff-min-s=%u "
		"deliver-timeout-connect-s=%u deliver-timeout-greeting-s=%u deliver-timeout-command-s=%u "
		"deliver-timeout-data-init-s=%u deliver-timeout-data-block-s=%u "
		"deliver-timeout-data-done-s=%u "
		"deliver-timeout-pipe-s=%u\n",
		d->connections_max, starttls_words[d->starttls], d->ca_file[0] ? d->ca_file : "-",
		d->tls_name[0] ? d->tls_name : "-", d->retry_min_s, d->retry_max_s, d->queue_lifetime_s,
		d->hop_backoff_min_s, d->timeout_connect_s, d->timeout_greeting_s, d->timeout_command_s,
		d->timeout_data_init_s, d->timeout_data_block_s, d->timeout_data_done_s, d->timeout_pipe_s);
	if (d->hop[0].kind == IO_HOP_AMQP)
		fprintf(f,
			"dotspool: deliver: amqp-window=%u deliver-timeout-confirm-s=%u "
			"amqp-max-message-size=%llu deliver-credentials=%s\n",
			d->amqp_window, d->timeout_confirm_s, (unsigned long long)d->amqp_max_message_bytes,
			d->credentials_file[0] ? d->credentials_file : "-");
}
