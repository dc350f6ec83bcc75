/* SPDX-License-Identifier: MIT */
/*
 * Prometheus text exposition (format 0.0.4) of the workers' metrics and
 * the tiny HTTP/1.0 front of GET /metrics. Nothing here runs on the
 * message path: rendering reads the workers' counters with relaxed loads.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ds_assert.h"
#include "ds_clock.h"
#include "metrics.h"

const uint64_t obs_metrics_lat_bounds_us[OBS_METRICS_LAT_BUCKETS] = {
	25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000,
};
/* The same bounds as Prometheus "le" labels, in seconds. */
static const char *const lat_le[OBS_METRICS_LAT_BUCKETS] = {
	"0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
	"0.005",    "0.01",    "0.025",	 "0.05",    "0.1",    "0.25",  "1",
};
const uint64_t obs_metrics_batch_bounds[OBS_METRICS_BATCH_BUCKETS] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
/*
 * Delivery latency spans a hand-off to a local next hop (milliseconds) and
 * retries after a backoff (minutes to the queue lifetime, days).
 */
const uint64_t obs_metrics_dlv_lat_bounds_us[OBS_METRICS_DLV_LAT_BUCKETS] = {
	1000,	   5000,       10000,	   25000,	50000,	     100000,   250000,
	500000,	   1000000,    2500000,	   5000000,	10000000,    30000000, 60000000,
	300000000, 1800000000, 3600000000, 14400000000, 86400000000,
};
static const char *const dlv_lat_le[OBS_METRICS_DLV_LAT_BUCKETS] = {
	"0.001", "0.005", "0.01", "0.025", "0.05", "0.1",  "0.25", "0.5",   "1",     "2.5",
	"5",	 "10",	  "30",	  "60",	   "300",  "1800", "3600", "14400", "86400",
};

static const char *const refuse_name[OBS_REFUSE_COUNT] = {"limit_total", "limit_per_ip", "shutdown",
							  "proxy_error"};
static const char *const throttle_name[OBS_THROTTLE_COUNT] = {
	"client_connection_rate_max", "client_message_rate_max", "client_recipient_rate_max",
	"session_unknown_recipients_max"};
static const char *const verify_name[OBS_VERIFY_COUNT] = {"known", "unknown", "tempfail", "cached_known",
							   "cached_unknown"};
static const char *const reply_name[OBS_REPLY_COUNT] = {"2xx", "3xx", "4xx", "5xx"};

static const char *const queue_state_name[OBS_QUEUE_STATE_COUNT] = {"new", "deferred", "active"};
static const char *const outcome_name[3] = {"delivered", "deferred", "failed"};
static const char *const operator_action_name[OBS_OPERATOR_ACTIONS + 1] = {"", "hold", "release", "delete",
									  "bounce", "retry"};

/*
 * The hops' label values, escaped once at start-up (the exposition's
 * escapes double a byte at most, plus the "...#i" of a cut name).
 */
#define HOP_LABEL_MAX (2 * OBS_METRICS_HOP_NAME_MAX + 16)
static char hop_label[OBS_METRICS_HOPS_MAX][HOP_LABEL_MAX];
static unsigned hop_count;

/* The spool's watermark: server-wide, one writer (io/watermark.c's sampler). */
static struct obs_metrics_watermark watermark;

void obs_metrics_watermark_set(bool high, bool went_high, uint64_t bytes, uint64_t max_bytes,
			       uint64_t resume_bytes, uint64_t free_bytes, uint64_t min_free_bytes)
{
	obs_counter_set(&watermark.bytes, bytes);
	obs_counter_set(&watermark.max_bytes, max_bytes);
	obs_counter_set(&watermark.resume_bytes, resume_bytes);
	obs_counter_set(&watermark.free_bytes, free_bytes);
	obs_counter_set(&watermark.min_free_bytes, min_free_bytes);
	obs_counter_set(&watermark.high, high ? 1 : 0);
	if (went_high)
		obs_counter_add(&watermark.highs, 1);
	obs_counter_add(&watermark.samples, 1);
}

const struct obs_metrics_watermark *obs_metrics_watermark(void)
{
	return &watermark;
}

/* Reclamation and compaction: server-wide, one writer (the reclamation thread). */
static struct obs_metrics_reclaim reclaim;

void obs_metrics_reclaim_set(uint64_t segments, uint64_t bytes, uint64_t reclaimed, uint64_t reclaimed_bytes,
			     uint64_t compacted, uint64_t compacted_messages, uint64_t compacted_bytes)
{
	obs_counter_set(&reclaim.segments, segments);
	obs_counter_set(&reclaim.bytes, bytes);
	obs_counter_set(&reclaim.reclaimed, reclaimed);
	obs_counter_set(&reclaim.reclaimed_bytes, reclaimed_bytes);
	obs_counter_set(&reclaim.compacted, compacted);
	obs_counter_set(&reclaim.compacted_messages, compacted_messages);
	obs_counter_set(&reclaim.compacted_bytes, compacted_bytes);
	obs_counter_set(&reclaim.on, 1);
}

void obs_metrics_recycle_set(uint64_t segments_free, uint64_t recycled)
{
	obs_counter_set(&reclaim.segments_free, segments_free);
	obs_counter_set(&reclaim.recycled, recycled);
}

static struct obs_metrics_rcpt_table rcpt_table;

void obs_metrics_rcpt_table_set(uint64_t entries, uint64_t bytes, uint64_t reloads_ok, uint64_t reloads_failed)
{
	obs_counter_set(&rcpt_table.entries, entries);
	obs_counter_set(&rcpt_table.bytes, bytes);
	obs_counter_set(&rcpt_table.reloads_ok, reloads_ok);
	obs_counter_set(&rcpt_table.reloads_failed, reloads_failed);
	obs_counter_set(&rcpt_table.on, 1);
}

const struct obs_metrics_reclaim *obs_metrics_reclaim(void)
{
	return &reclaim;
}

void obs_metrics_init(struct obs_metrics *m)
{
	memset(m, 0, sizeof(*m));
	DS_ASSERT(((uintptr_t)m & 63) == 0);
	obs_counter_set(&m->dlv.queue_oldest_us, (uint64_t)INT64_MAX);
}

void obs_metrics_set_hops(const char *const *names, unsigned n)
{
	DS_ASSERT(n <= OBS_METRICS_HOPS_MAX);
	for (unsigned i = 0; i < n; i++) {
		const char *s = names[i] ? names[i] : "";
		size_t len = strlen(s);
		bool cut = len > OBS_METRICS_HOP_NAME_MAX;
		if (cut)
			len = OBS_METRICS_HOP_NAME_MAX;
		char *o = hop_label[i];
		for (size_t k = 0; k < len; k++) {
			unsigned char c = (unsigned char)s[k];
			if (c == '\\' || c == '"')
				*o++ = '\\', *o++ = (char)c;
			else if (c == '\n')
				*o++ = '\\', *o++ = 'n';
			else if (c < 0x20 || c >= 0x7f) /* keep the text ASCII, hence valid UTF-8 */
				*o++ = '?';
			else
				*o++ = (char)c;
		}
		if (cut)
			o += sprintf(o, "...#%u", i);
		*o = 0;
		DS_ASSERT((size_t)(o - hop_label[i]) < HOP_LABEL_MAX);
	}
	hop_count = n;
}

size_t obs_metrics_render_bound(unsigned n)
{
	/*
	 * Per worker: about 70 sample lines of at most ~110 bytes (longest
	 * name + labels + a 20-digit value); HELP/TYPE lines and the server
	 * totals are fixed. Checked by tests/ops with every counter at
	 * UINT64_MAX and IO_THREADS_MAX workers.
	 */
	/*
	 * The delivery families are server totals: about 60 fixed lines and
	 * HELP/TYPE text, plus 8 series per hop, each with its label. Counted
	 * for every hop whether registered or not, so a buffer sized before
	 * obs_metrics_set_hops() still fits.
	 */
	size_t dlv = 12288 + 1024 /* operator */ + (size_t)OBS_METRICS_HOPS_MAX * 8 * (128 + HOP_LABEL_MAX);
	/* The watermark: 8 fixed families of one sample each; reclamation: 8 more. */
	size_t wm = 4096 + 4096 + 2048 /* recipient table */;
	return 16384 + (size_t)n * 12288 + dlv + wm;
}

struct out {
	char *buf;
	size_t cap;
	size_t len; /* as if cap were unlimited */
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	size_t room = o->len < o->cap ? o->cap - o->len : 0;
	int r = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
	va_end(ap);
	DS_ASSERT(r >= 0);
	o->len += (size_t)r;
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample per worker of a simple counter/gauge. */
static void per_worker(struct out *o, const struct obs_metrics *const *w, unsigned n, const char *name,
		       const char *type, const char *help, size_t off)
{
	family(o, name, type, help);
	for (unsigned i = 0; i < n; i++)
		if (w[i])
			put(o, "%s{worker=\"%u\"} %llu\n", name, i,
			    (unsigned long long)obs_counter_get(
				    (const obs_counter_t *)((const uint8_t *)w[i] + off)));
}

static uint64_t sum_all(const struct obs_metrics *const *w, unsigned n, size_t off)
{
	uint64_t s = 0;
	for (unsigned i = 0; i < n; i++)
		if (w[i])
			s += obs_counter_get((const obs_counter_t *)((const uint8_t *)w[i] + off));
	return s;
}

/* Histogram samples for one label set; bucket[] is non-cumulative, nb finite bounds + 1 for +Inf. */
static void hist_samples(struct out *o, const char *name, const char *labels, const uint64_t *bucket,
			 unsigned nb, const char *const *le_text, const uint64_t *le_num, uint64_t sum,
			 bool sum_is_us)
{
	uint64_t cum = 0;
	const char *sep = labels[0] ? "," : "";
	for (unsigned b = 0; b <= nb; b++) {
		cum += bucket[b];
		if (b == nb)
			put(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
			    (unsigned long long)cum);
		else if (le_text)
			put(o, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, le_text[b],
			    (unsigned long long)cum);
		else
			put(o, "%s_bucket{%s%sle=\"%llu\"} %llu\n", name, labels, sep,
			    (unsigned long long)le_num[b], (unsigned long long)cum);
	}
	const char *lb = labels[0] ? "{" : "";
	const char *rb = labels[0] ? "}" : "";
	if (sum_is_us)
		put(o, "%s_sum%s%s%s %llu.%06llu\n", name, lb, labels, rb,
		    (unsigned long long)(sum / 1000000), (unsigned long long)(sum % 1000000));
	else
		put(o, "%s_sum%s%s%s %llu\n", name, lb, labels, rb, (unsigned long long)sum);
	put(o, "%s_count%s%s%s %llu\n", name, lb, labels, rb, (unsigned long long)cum);
}

static void lat_family(struct out *o, const struct obs_metrics *const *w, unsigned n, const char *name,
		       const char *help, size_t off)
{
	family(o, name, "histogram", help);
	for (unsigned i = 0; i < n; i++) {
		if (!w[i])
			continue;
		const struct obs_metrics_lat_hist *h = (const void *)((const uint8_t *)w[i] + off);
		uint64_t b[OBS_METRICS_LAT_BUCKETS + 1];
		for (unsigned k = 0; k <= OBS_METRICS_LAT_BUCKETS; k++)
			b[k] = obs_counter_get(&h->bucket[k]);
		char labels[32];
		snprintf(labels, sizeof(labels), "worker=\"%u\"", i);
		hist_samples(o, name, labels, b, OBS_METRICS_LAT_BUCKETS, lat_le, NULL,
			     obs_counter_get(&h->sum_us), true);
	}
}

#define OFF(f) offsetof(struct obs_metrics, f)

/* Connections, messages, replies, TLS handshakes: what the sessions did. */
static void render_sessions(struct out *o, const struct obs_metrics *const *w, unsigned n)
{
	per_worker(o, w, n, "dotspool_connections_current", "gauge", "Connections open now.",
		   OFF(connections_current));
	per_worker(o, w, n, "dotspool_connections_total", "counter", "Connections accepted and served.",
		   OFF(connections_total));

	family(o, "dotspool_connections_refused_total", "counter",
	       "Connections refused before a session, by reason.");
	for (unsigned i = 0; i < n; i++)
		for (unsigned r = 0; w[i] && r < OBS_REFUSE_COUNT; r++)
			put(o, "dotspool_connections_refused_total{worker=\"%u\",reason=\"%s\"} %llu\n", i,
			    refuse_name[r],
			    (unsigned long long)obs_counter_get(&w[i]->connections_refused[r]));

	family(o, "dotspool_throttled_total", "counter",
	       "Refusals by an ingress policy limit (issue 17), by the limit's key.");
	for (unsigned i = 0; i < n; i++)
		for (unsigned r = 0; w[i] && r < OBS_THROTTLE_COUNT; r++)
			put(o, "dotspool_throttled_total{worker=\"%u\",limit=\"%s\"} %llu\n", i, throttle_name[r],
			    (unsigned long long)obs_counter_get(&w[i]->throttled[r]));
	per_worker(o, w, n, "dotspool_recipients_unknown_total", "counter",
		   "Recipients refused as unknown at RCPT (recipient table or verification).",
		   OFF(recipients_unknown));
	family(o, "dotspool_recipient_verifications_total", "counter",
	       "Recipient verification answers (--verify-recipients): probes of the next hop and cache hits.");
	for (unsigned i = 0; i < n; i++)
		for (unsigned r = 0; w[i] && r < OBS_VERIFY_COUNT; r++)
			put(o, "dotspool_recipient_verifications_total{worker=\"%u\",result=\"%s\"} %llu\n", i,
			    verify_name[r], (unsigned long long)obs_counter_get(&w[i]->verify[r]));

	per_worker(o, w, n, "dotspool_messages_accepted_total", "counter",
		   "Messages answered 250 at the end of data (durable).", OFF(messages_accepted));
	per_worker(o, w, n, "dotspool_accepted_bytes_total", "counter", "Bytes of messages accepted.",
		   OFF(bytes_accepted));
	per_worker(o, w, n, "dotspool_messages_rejected_total", "counter",
		   "Messages answered 4xx/5xx at the end of data.", OFF(messages_rejected));

	family(o, "dotspool_replies_total", "counter", "SMTP/LMTP replies sent, by code class.");
	for (unsigned i = 0; i < n; i++)
		for (unsigned c = 0; w[i] && c < OBS_REPLY_COUNT; c++)
			put(o, "dotspool_replies_total{worker=\"%u\",class=\"%s\"} %llu\n", i, reply_name[c],
			    (unsigned long long)obs_counter_get(&w[i]->replies[c]));

	family(o, "dotspool_tls_handshakes_total", "counter", "TLS handshakes, by result.");
	for (unsigned i = 0; i < n; i++) {
		if (!w[i])
			continue;
		put(o, "dotspool_tls_handshakes_total{worker=\"%u\",result=\"ok\"} %llu\n", i,
		    (unsigned long long)obs_counter_get(&w[i]->tls_handshakes_ok));
		put(o, "dotspool_tls_handshakes_total{worker=\"%u\",result=\"failed\"} %llu\n", i,
		    (unsigned long long)obs_counter_get(&w[i]->tls_handshakes_failed));
	}
}

/* Flushes, the spool's space, the batch and latency histograms: what the spool lane did. */
static void render_spool(struct out *o, const struct obs_metrics *const *w, unsigned n)
{
	per_worker(o, w, n, "dotspool_flushes_total", "counter", "Group-commit flushes completed.",
		   OFF(flushes));
	per_worker(o, w, n, "dotspool_flush_errors_total", "counter", "Group-commit flushes that failed.",
		   OFF(flush_errors));
	per_worker(o, w, n, "dotspool_spool_pad_bytes_total", "counter",
		   "Padding written to keep groups on fresh blocks (--spool-io direct; 0 when buffered).",
		   OFF(spool_pad_bytes));
	per_worker(o, w, n, "dotspool_spool_segments_recycled_total", "counter",
		   "Segments prepared by the lane's spare from a free file (no zero-fill).",
		   OFF(spool_segments_recycled));
	per_worker(o, w, n, "dotspool_spool_segments_fresh_total", "counter",
		   "Segments prepared by the lane's spare as a new file (allocated and zero-filled).",
		   OFF(spool_segments_fresh));
	per_worker(o, w, n, "dotspool_spool_segments_spare", "gauge",
		   "Prepared segments ready for the lane (--segment-spares at most; each segment-size bytes "
		   "on disk).",
		   OFF(spool_segments_spare));
	per_worker(o, w, n, "dotspool_spool_used_bytes", "gauge",
		   "Bytes of spool segment files this worker's lane created since start-up (preallocated).",
		   OFF(spool_bytes_used));
	per_worker(o, w, n, "dotspool_spool_free_bytes", "gauge",
		   "Bytes free on the spool's file system (statvfs f_bavail), refreshed every second.",
		   OFF(spool_bytes_free));

	family(o, "dotspool_messages_per_flush", "histogram", "Commits covered by one group-commit flush.");
	for (unsigned i = 0; i < n; i++) {
		if (!w[i])
			continue;
		uint64_t b[OBS_METRICS_BATCH_BUCKETS + 1];
		for (unsigned k = 0; k <= OBS_METRICS_BATCH_BUCKETS; k++)
			b[k] = obs_counter_get(&w[i]->messages_per_flush.bucket[k]);
		char labels[32];
		snprintf(labels, sizeof(labels), "worker=\"%u\"", i);
		hist_samples(o, "dotspool_messages_per_flush", labels, b, OBS_METRICS_BATCH_BUCKETS, NULL,
			     obs_metrics_batch_bounds, obs_counter_get(&w[i]->messages_per_flush.sum), false);
	}

	lat_family(o, w, n, "dotspool_sync_gap_seconds",
		   "Final dot received to 250 sent (the RFC 1047 synchronization gap).", OFF(sync_gap));
	lat_family(o, w, n, "dotspool_flush_duration_seconds", "Group-commit flush submitted to completed.",
		   OFF(flush_duration));
}

/* Server-wide totals (no worker label), for dashboards and curl users. */
static void render_totals(struct out *o, const struct obs_metrics *const *w, unsigned n)
{
	family(o, "dotspool_server_connections_current", "gauge", "Connections open now, all workers.");
	put(o, "dotspool_server_connections_current %llu\n",
	    (unsigned long long)sum_all(w, n, OFF(connections_current)));
	family(o, "dotspool_server_messages_accepted_total", "counter", "Messages accepted, all workers.");
	put(o, "dotspool_server_messages_accepted_total %llu\n",
	    (unsigned long long)sum_all(w, n, OFF(messages_accepted)));
	family(o, "dotspool_server_accepted_bytes_total", "counter", "Bytes accepted, all workers.");
	put(o, "dotspool_server_accepted_bytes_total %llu\n",
	    (unsigned long long)sum_all(w, n, OFF(bytes_accepted)));

	family(o, "dotspool_server_sync_gap_seconds", "histogram",
	       "Final dot received to 250 sent, all workers (RFC 1047 synchronization gap).");
	uint64_t b[OBS_METRICS_LAT_BUCKETS + 1];
	for (unsigned k = 0; k <= OBS_METRICS_LAT_BUCKETS; k++)
		b[k] = sum_all(w, n, OFF(sync_gap.bucket) + k * sizeof(obs_counter_t));
	hist_samples(o, "dotspool_server_sync_gap_seconds", "", b, OBS_METRICS_LAT_BUCKETS, lat_le, NULL,
		     sum_all(w, n, OFF(sync_gap.sum_us)), true);

	/* Gap dedup (issue 16; io/gap.h). */
	static const struct {
		const char *name, *type, *help;
		size_t off;
	} gap[] = {
		{"dotspool_gap_at_risk_total", "counter",
		 "Messages whose 250 was never shown read (connection lost first): fingerprinted, at risk.",
		 OFF(gap_at_risk_total)},
		{"dotspool_gap_suppressed_total", "counter",
		 "Retries of an at-risk message answered 'already queued' and not stored (byte-compared).",
		 OFF(gap_suppressed_total)},
		{"dotspool_gap_compare_miss_total", "counter",
		 "Stored copies with the same envelope whose bytes differed from a new message's (stored).",
		 OFF(gap_compare_miss)},
		{"dotspool_gap_record_errors_total", "counter",
		 "Gap records that could not be made durable (the entry lived in memory only).",
		 OFF(gap_record_errors)},
		{"dotspool_gap_set_entries", "gauge", "Fingerprints in the server-wide gap set.", OFF(gap_set_entries)},
		{"dotspool_gap_at_risk_messages", "gauge", "At-risk messages in the gap set (within their window).",
		 OFF(gap_set_at_risk)},
		{"dotspool_gap_set_full_total", "counter",
		 "At-risk messages the full gap set could not take (stored as usual, never suppressed against).",
		 OFF(gap_set_full)},
	};
	for (size_t i = 0; i < sizeof(gap) / sizeof(gap[0]); i++) {
		family(o, gap[i].name, gap[i].type, gap[i].help);
		put(o, "%s %llu\n", gap[i].name, (unsigned long long)sum_all(w, n, gap[i].off));
	}
}

/* One server-wide sample of a process-wide value, with its family. */
static void single(struct out *o, const char *name, const char *type, const char *help,
		   const obs_counter_t *c)
{
	family(o, name, type, help);
	put(o, "%s %llu\n", name, (unsigned long long)obs_counter_get(c));
}

/* The spool's high watermark (issue 15): what MAIL is refused on, and the figures it compares. */
static void render_watermark(struct out *o)
{
	const struct obs_metrics_watermark *m = &watermark;
	single(o, "dotspool_spool_watermark_high", "gauge",
	       "1 while the spool is above its high watermark: new transactions get 452 4.3.1 at MAIL.",
	       &m->high);
	single(o, "dotspool_spool_watermark_high_total", "counter",
	       "Times the spool went above its high watermark.", &m->highs);
	single(o, "dotspool_spool_disk_bytes", "gauge",
	       "Bytes of the spool directory's files on disk (allocated), compared with spool-max-bytes.",
	       &m->bytes);
	single(o, "dotspool_spool_max_bytes", "gauge",
	       "High watermark on the spool's bytes (spool-max-bytes).", &m->max_bytes);
	single(o, "dotspool_spool_resume_bytes", "gauge",
	       "Low watermark on the spool's bytes: back below it (and above the free floor) mail is "
	       "accepted "
	       "again.",
	       &m->resume_bytes);
	single(o, "dotspool_spool_fs_free_bytes", "gauge",
	       "Bytes free on the spool's file system (statvfs f_bavail), compared with "
	       "spool-min-free-bytes.",
	       &m->free_bytes);
	single(o, "dotspool_spool_min_free_bytes", "gauge",
	       "Free-space floor on the spool's file system (spool-min-free-bytes).", &m->min_free_bytes);
	single(o, "dotspool_spool_watermark_samples_total", "counter",
	       "Samples of the spool's size taken (0: no sampler, the watermark gauges mean nothing).",
	       &m->samples);
}

/* Reclamation and compaction (issue 15): the spool's segments on disk and what left them. */
/* The recipient table (issue 17): only once --recipients has loaded one. */
static void render_rcpt_table(struct out *o)
{
	const struct obs_metrics_rcpt_table *m = &rcpt_table;
	if (!obs_counter_get(&m->on))
		return;
	single(o, "dotspool_recipient_table_entries", "gauge",
	       "Entries (addresses and @domains) of the recipient table in use.", &m->entries);
	single(o, "dotspool_recipient_table_bytes", "gauge", "Memory of the recipient table in use.", &m->bytes);
	family(o, "dotspool_recipient_table_reloads_total", "counter",
	       "Reloads of the recipient table (SIGHUP); failed: the old table was kept.");
	put(o, "dotspool_recipient_table_reloads_total{result=\"ok\"} %llu\n",
	    (unsigned long long)obs_counter_get(&m->reloads_ok));
	put(o, "dotspool_recipient_table_reloads_total{result=\"failed\"} %llu\n",
	    (unsigned long long)obs_counter_get(&m->reloads_failed));
}

static void render_reclaim(struct out *o)
{
	const struct obs_metrics_reclaim *m = &reclaim;
	single(o, "dotspool_spool_reclaim_on", "gauge",
	       "1 when segment reclamation runs (--reclaim); 0: the reclamation families mean nothing.",
	       &m->on);
	single(o, "dotspool_spool_segments", "gauge",
	       "Segment files in the spool's lanes, as reclamation knows them.", &m->segments);
	single(o, "dotspool_spool_bytes_on_disk", "gauge",
	       "Bytes of the spool's segment files (segment size each), as reclamation knows them.",
	       &m->bytes);
	single(o, "dotspool_spool_segments_free", "gauge",
	       "Free files: reclaimed segments kept for reuse (--segment-recycle-max), counted in "
	       "dotspool_spool_bytes_on_disk.",
	       &m->segments_free);
	single(o, "dotspool_recycled_segments_total", "counter",
	       "Reclaimed segments renamed to free files instead of deleted (counted in reclaimed too).",
	       &m->recycled);
	single(o, "dotspool_reclaimed_segments_total", "counter",
	       "Segments reclaimed (every message in them final, the unlink durable).", &m->reclaimed);
	single(o, "dotspool_reclaimed_bytes_total", "counter", "Bytes of the segments reclaimed.",
	       &m->reclaimed_bytes);
	single(o, "dotspool_compacted_segments_total", "counter",
	       "Segments compacted: their live messages copied into the lane's current segment, so they can "
	       "go.",
	       &m->compacted);
	single(o, "dotspool_compacted_messages_total", "counter", "Messages copied forward by compaction.",
	       &m->compacted_messages);
	single(o, "dotspool_compacted_bytes_total", "counter", "Body bytes copied forward by compaction.",
	       &m->compacted_bytes);
}

/* One server-wide sample (sum over workers) of a counter or gauge, with its family. */
static void total(struct out *o, const struct obs_metrics *const *w, unsigned n, const char *name,
		  const char *type, const char *help, size_t off)
{
	family(o, name, type, help);
	put(o, "%s %llu\n", name, (unsigned long long)sum_all(w, n, off));
}

/* The per-hop counter at off inside struct obs_metrics_hop, summed over workers, one line per hop. */
static void per_hop(struct out *o, const struct obs_metrics *const *w, unsigned n, const char *name,
		    const char *type, const char *help, size_t off)
{
	family(o, name, type, help);
	for (unsigned h = 0; h < hop_count; h++)
		put(o, "%s{hop=\"%s\"} %llu\n", name, hop_label[h],
		    (unsigned long long)sum_all(w, n,
						OFF(dlv.hop) + h * sizeof(struct obs_metrics_hop) + off));
}

/* The oldest queued message's age, max over workers; 0 when every queue is empty. */
static void render_oldest(struct out *o, const struct obs_metrics *const *w, unsigned n, int64_t now_us)
{
	uint64_t age = 0;
	for (unsigned i = 0; i < n; i++) {
		if (!w[i])
			continue;
		int64_t t = (int64_t)obs_counter_get(&w[i]->dlv.queue_oldest_us);
		/* Unsigned difference: no overflow whatever a worker stored; a clock step back reads 0. */
		if (t != INT64_MAX && t < now_us)
			age = DS_MAX(age, (uint64_t)now_us - (uint64_t)t);
	}
	family(o, "dotspool_queue_oldest_message_age_seconds", "gauge",
	       "Age of the oldest message queued for delivery (now - received), all workers; 0 when empty.");
	put(o, "dotspool_queue_oldest_message_age_seconds %llu.%06llu\n", (unsigned long long)(age / 1000000),
	    (unsigned long long)(age % 1000000));
}

/* The delivery stage (issue 14): server totals, by state or next hop. Only with --deliver-to. */
static void render_delivery(struct out *o, const struct obs_metrics *const *w, unsigned n, int64_t now_us)
{
	if (!hop_count)
		return;
	family(o, "dotspool_queue_messages", "gauge", "Messages queued for delivery, by state.");
	for (unsigned s = 0; s < OBS_QUEUE_STATE_COUNT; s++)
		put(o, "dotspool_queue_messages{state=\"%s\"} %llu\n", queue_state_name[s],
		    (unsigned long long)sum_all(w, n, OFF(dlv.queue_messages) + s * sizeof(obs_counter_t)));
	family(o, "dotspool_queue_bytes", "gauge",
	       "Body bytes of the messages queued for delivery, by state.");
	for (unsigned s = 0; s < OBS_QUEUE_STATE_COUNT; s++)
		put(o, "dotspool_queue_bytes{state=\"%s\"} %llu\n", queue_state_name[s],
		    (unsigned long long)sum_all(w, n, OFF(dlv.queue_bytes) + s * sizeof(obs_counter_t)));
	total(o, w, n, "dotspool_queue_recipients_open", "gauge",
	      "Recipients of queued messages without a final outcome.", OFF(dlv.queue_rcpts_open));
	render_oldest(o, w, n, now_us);

	family(o, "dotspool_deliveries_total", "counter",
	       "Recipients that reached an outcome at a next hop, by hop and outcome.");
	for (unsigned h = 0; h < hop_count; h++)
		for (unsigned c = 0; c < 3; c++)
			put(o, "dotspool_deliveries_total{hop=\"%s\",outcome=\"%s\"} %llu\n", hop_label[h],
			    outcome_name[c],
			    (unsigned long long)sum_all(w, n,
							OFF(dlv.hop) + h * sizeof(struct obs_metrics_hop) +
								offsetof(struct obs_metrics_hop, outcomes) +
								c * sizeof(obs_counter_t)));
	per_hop(o, w, n, "dotspool_delivery_attempts_total", "counter",
		"Delivery attempts (one per message per attempt), by next hop.",
		offsetof(struct obs_metrics_hop, attempts));

	family(o, "dotspool_delivery_latency_seconds", "histogram",
	       "Commit (the 250 of ingest) to the next hop's accept, per message and attempt that "
	       "delivered.");
	uint64_t b[OBS_METRICS_DLV_LAT_BUCKETS + 1];
	for (unsigned k = 0; k <= OBS_METRICS_DLV_LAT_BUCKETS; k++)
		b[k] = sum_all(w, n, OFF(dlv.latency.bucket) + k * sizeof(obs_counter_t));
	hist_samples(o, "dotspool_delivery_latency_seconds", "", b, OBS_METRICS_DLV_LAT_BUCKETS, dlv_lat_le,
		     NULL, sum_all(w, n, OFF(dlv.latency.sum_us)), true);

	total(o, w, n, "dotspool_redeliveries_total", "counter",
	      "Recipients delivered again after a restart cut an attempt short (possible duplicates).",
	      OFF(dlv.redeliveries));
	total(o, w, n, "dotspool_delivery_possible_duplicates_total", "counter",
	      "Recipients whose connection was lost after the final dot, before the reply (tried again).",
	      OFF(dlv.possible_duplicates));

	per_hop(o, w, n, "dotspool_deliver_connections", "gauge",
		"Connections to the next hop open now (connecting ones included).",
		offsetof(struct obs_metrics_hop, conns_current));
	per_hop(o, w, n, "dotspool_deliver_connections_total", "counter",
		"Connections to the next hop opened (connects started, failed ones included).",
		offsetof(struct obs_metrics_hop, conns_total));
	per_hop(o, w, n, "dotspool_deliver_connect_failures_total", "counter",
		"Connections to the next hop that failed (refused, timed out, greeting, hello or TLS).",
		offsetof(struct obs_metrics_hop, conn_failures));

	family(o, "dotspool_deliver_hop_up", "gauge",
	       "1 when every worker considers the next hop up, 0 while one backs it off.");
	for (unsigned h = 0; h < hop_count; h++) {
		bool up = true;
		for (unsigned i = 0; i < n; i++)
			if (w[i] && obs_counter_get(&w[i]->dlv.hop[h].down))
				up = false;
		put(o, "dotspool_deliver_hop_up{hop=\"%s\"} %d\n", hop_label[h], up ? 1 : 0);
	}

	total(o, w, n, "dotspool_dsn_total", "counter", "Delivery status notifications (bounces) spooled.",
	      OFF(dlv.dsns));
	total(o, w, n, "dotspool_outcome_records_total", "counter",
	      "Delivery outcome records written to the spool.", OFF(dlv.records));
	total(o, w, n, "dotspool_outcome_record_errors_total", "counter",
	      "Delivery outcome records that could not be written.", OFF(dlv.record_errors));
	total(o, w, n, "dotspool_queue_held", "gauge", "Messages an operator holds (dotspool-ctl hold).",
	      OFF(dlv.queue_held));
	family(o, "dotspool_operator_actions_total", "counter",
	       "Operator actions recorded (one per message), by action (dotspool-ctl).");
	for (unsigned a = 1; a <= OBS_OPERATOR_ACTIONS; a++)
		put(o, "dotspool_operator_actions_total{action=\"%s\"} %llu\n", operator_action_name[a],
		    (unsigned long long)sum_all(w, n, OFF(dlv.operator_actions) + a * sizeof(obs_counter_t)));
}
/* The amqp:// hand-off (issue 18): only when the next hops are amqp:// ones. */
static const char *const handoff_result_name[OBS_HANDOFF_RESULTS] = {
	"confirmed", "nacked", "returned", "timeout", "connection_lost", "no_connection", "too_big", "read_error",
};

static void handoff_hist(struct out *o, const struct obs_metrics *const *w, unsigned n, const char *name,
			 const char *help, size_t off)
{
	family(o, name, "histogram", help);
	uint64_t b[OBS_METRICS_DLV_LAT_BUCKETS + 1];
	for (unsigned k = 0; k <= OBS_METRICS_DLV_LAT_BUCKETS; k++)
		b[k] = sum_all(w, n, off + offsetof(struct obs_metrics_dlv_lat_hist, bucket) + k * sizeof(obs_counter_t));
	hist_samples(o, name, "", b, OBS_METRICS_DLV_LAT_BUCKETS, dlv_lat_le, NULL,
		     sum_all(w, n, off + offsetof(struct obs_metrics_dlv_lat_hist, sum_us)), true);
}

static void render_handoff(struct out *o, const struct obs_metrics *const *w, unsigned n)
{
	if (hop_count == 0 || strncmp(hop_label[0], "amqp://", 7) != 0)
		return;
	family(o, "dotspool_handoff_results_total", "counter",
	       "Messages the broker hand-off finished with, by result (confirmed is final; the others are "
	       "deferred, too_big failed).");
	for (unsigned r = 0; r < OBS_HANDOFF_RESULTS; r++)
		put(o, "dotspool_handoff_results_total{result=\"%s\"} %llu\n", handoff_result_name[r],
		    (unsigned long long)sum_all(w, n, OFF(handoff.results) + r * sizeof(obs_counter_t)));
	total(o, w, n, "dotspool_handoff_unconfirmed", "gauge",
	      "Messages published to the broker and not confirmed yet (all workers).", OFF(handoff.unconfirmed));
	total(o, w, n, "dotspool_handoff_connections_up", "gauge",
	      "Hand-off threads (one per worker) connected to a broker now.", OFF(handoff.connected));
	put(o, "# HELP dotspool_handoff_workers Hand-off threads (one per worker).\n"
	       "# TYPE dotspool_handoff_workers gauge\ndotspool_handoff_workers %u\n",
	    n);
	total(o, w, n, "dotspool_handoff_connection_losses_total", "counter",
	      "Broker connections lost or refused (one per outage per worker).", OFF(handoff.connection_losses));
	handoff_hist(o, w, n, "dotspool_handoff_latency_seconds",
		     "Accepted (received_at) to the broker's confirm, per confirmed message.",
		     OFF(handoff.accepted_to_confirm));
	handoff_hist(o, w, n, "dotspool_handoff_confirm_seconds",
		     "Publish to the broker's confirm, per confirmed message.", OFF(handoff.publish_to_confirm));
}
#undef OFF

size_t obs_metrics_render_at(const struct obs_metrics *const *w, unsigned n, char *buf, size_t cap,
			     int64_t now_wall_us)
{
	struct out o = {.buf = buf, .cap = cap, .len = 0};
	if (cap)
		buf[0] = 0;
	render_sessions(&o, w, n);
	render_spool(&o, w, n);
	render_totals(&o, w, n);
	render_watermark(&o);
	render_reclaim(&o);
	render_rcpt_table(&o);
	render_delivery(&o, w, n, now_wall_us);
	render_handoff(&o, w, n);
	return o.len;
}

size_t obs_metrics_render(const struct obs_metrics *const *w, unsigned n, char *buf, size_t cap)
{
	return obs_metrics_render_at(w, n, buf, cap, ds_wall_us());
}

/* ---------------- HTTP ---------------- */

static const char content_type[] = "text/plain; version=0.0.4; charset=utf-8";

static int respond(char *out, size_t cap, size_t *out_len, int status, const char *reason, const char *extra,
		   const char *body)
{
	size_t blen = strlen(body);
	int r = snprintf(
		out, cap,
		"HTTP/1.0 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
		"%sConnection: close\r\n\r\n%s",
		status, reason, blen, extra, body);
	if (r < 0 || (size_t)r >= cap)
		return -ENOSPC;
	*out_len = (size_t)r;
	return status;
}

/* End of the header block: index just past it, or 0 when not complete. */
static size_t headers_end(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (p[i] != '\n')
			continue;
		if (p[i + 1] == '\n')
			return i + 2;
		if (p[i + 1] == '\r' && i + 2 < len && p[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

int obs_metrics_http(const uint8_t *req, size_t len, const struct obs_metrics *const *workers, unsigned n,
		     char *out, size_t cap, size_t *out_len)
{
	*out_len = 0;
	size_t scan = DS_MIN(len, (size_t)OBS_METRICS_HTTP_REQUEST_MAX);
	size_t end = headers_end(req, scan);
	if (!end) {
		if (len < OBS_METRICS_HTTP_REQUEST_MAX)
			return 0;
		return respond(out, cap, out_len, 400, "Bad Request", "", "request too large\n");
	}

	/* Request line: METHOD SP TARGET SP HTTP/1.x CRLF */
	size_t eol = 0;
	while (eol < end && req[eol] != '\r' && req[eol] != '\n')
		eol++;
	const uint8_t *sp1 = memchr(req, ' ', eol);
	const uint8_t *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(req + eol - sp1 - 1)) : NULL;
	if (!sp1 || !sp2 || sp1 == req || sp2 == sp1 + 1)
		return respond(out, cap, out_len, 400, "Bad Request", "", "bad request line\n");
	size_t mlen = (size_t)(sp1 - req);
	const uint8_t *target = sp1 + 1;
	size_t tlen = (size_t)(sp2 - target);
	const uint8_t *ver = sp2 + 1;
	size_t vlen = (size_t)(req + eol - ver);
	if (vlen != 8 || (memcmp(ver, "HTTP/1.0", 8) != 0 && memcmp(ver, "HTTP/1.1", 8) != 0))
		return respond(out, cap, out_len, 400, "Bad Request", "", "bad HTTP version\n");
	for (size_t i = 0; i < mlen; i++)
		if (req[i] < 'A' || req[i] > 'Z')
			return respond(out, cap, out_len, 400, "Bad Request", "", "bad method\n");
	bool head = mlen == 4 && !memcmp(req, "HEAD", 4);
	bool get = mlen == 3 && !memcmp(req, "GET", 3);
	if (!get && !head)
		return respond(out, cap, out_len, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n",
			       "only GET and HEAD\n");
	bool is_metrics = tlen >= 8 && !memcmp(target, "/metrics", 8) && (tlen == 8 || target[8] == '?');
	if (!is_metrics)
		return respond(out, cap, out_len, 404, "Not Found", "", "try /metrics\n");

	/* Render the body after a reserved header area, then slide it down behind the real header. */
	if (cap < OBS_METRICS_HTTP_HEADER_MAX + 1)
		return -ENOSPC;
	size_t blen = obs_metrics_render(workers, n, out + OBS_METRICS_HTTP_HEADER_MAX,
					 cap - OBS_METRICS_HTTP_HEADER_MAX);
	if (blen >= cap - OBS_METRICS_HTTP_HEADER_MAX)
		return -ENOSPC;
	char hdr[OBS_METRICS_HTTP_HEADER_MAX];
	int h = snprintf(
		hdr, sizeof(hdr),
		"HTTP/1.0 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
		content_type, blen);
	DS_ASSERT(h > 0 && (size_t)h < sizeof(hdr));
	size_t body = head ? 0 : blen;
	memmove(out + h, out + OBS_METRICS_HTTP_HEADER_MAX, body);
	memcpy(out, hdr, (size_t)h);
	*out_len = (size_t)h + body;
	return 200;
}
