/* SPDX-License-Identifier: MIT */
/*
 * Writes a small spool through the lane and the synchronous ops, and the
 * expected result next to it: OUT/<ID>.eml (exact body) and OUT/manifest
 * (one JSON object per line, as dotspool-ctl list --json should print).
 * Usage: spool_fixture SPOOL_DIR OUT_DIR [multi]
 * multi: instead, 2 lanes of small segments, pairs of interleaved txns whose
 * bodies span segments and whose commits land segments after their ids'.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spool.h"
#include "spool_syncio.h"

static int acked;

static void on_settled(void *ctx, uint64_t cookie, int res)
{
	if (res) {
		fprintf(stderr, "commit %llu failed: %d\n", (unsigned long long)cookie, res);
		exit(1);
	}
	acked++;
}

static void record(const char *out, uint64_t txn_id, const char *body, size_t len)
{
	char id[24], path[512];
	FILE *f;

	spool_id_format(txn_id, id, sizeof(id));
	snprintf(path, sizeof(path), "%s/%s.eml", out, id);
	f = fopen(path, "wb");
	if (!f || fwrite(body, 1, len, f) != len || fclose(f))
		exit(1);
	snprintf(path, sizeof(path), "%s/ids", out);
	f = fopen(path, "a");
	if (!f)
		exit(1);
	fprintf(f, "%s\n", id);
	fclose(f);
}

static void multi(const char *spool, const char *out)
{
	static const unsigned lanes[] = {2, 5};
	struct spool_config cfg;

	spool_config_defaults(&cfg);
	cfg.dir = spool;
	cfg.segment_size = 512 * 1024;
	cfg.buffer_size = 256 * 1024;
	for (unsigned k = 0; k < 2; k++) {
		struct spool_syncio *sio;
		struct spool_lane *l;

		if (spool_syncio_create(&sio, on_settled, NULL) ||
		    spool_lane_open(&l, &cfg, lanes[k], spool_syncio_ops(), sio))
			exit(1);
		spool_syncio_attach(sio, l);
		for (unsigned i = 0; i < 12; i++) {
			struct spool_txn t[2];
			size_t len[2] = {(i * 7919u * 37u + k * 1000u) % 700000u, (i * 104729u) % 90000u};
			char *body[2];
			struct ds_rcpt r[] = {{"m@localhost", ""}};
			struct ds_envelope e = {"192.0.2.1",
						2525,
						"multi",
						"ESMTP",
						"s@example.org",
						"",
						r,
						1,
						"",
						1700000100000000ll + i,
						0};

			for (int j = 0; j < 2; j++) {
				body[j] = malloc(len[j] + 1);
				for (size_t o = 0; o < len[j]; o++)
					body[j][o] = (o % 64 == 62) ? '\r'
						     : (o % 64 == 63)
							     ? '\n'
							     : (char)('a' + (o * 7 + i + (size_t)j) % 26);
				if (spool_txn_begin(l, &t[j]))
					exit(1);
			}
			for (size_t off = 0; off < len[0] || off < len[1]; off += 7000) {
				for (int j = 0; j < 2; j++) {
					size_t n = off < len[j] ? (len[j] - off < 7000 ? len[j] - off : 7000)
								: 0;
					if (n && spool_txn_append(l, &t[j], body[j] + off, n))
						exit(1);
				}
				spool_syncio_run(sio);
			}
			for (int j = 1; j >= 0; j--) {
				e.body_size = len[j];
				if (spool_txn_commit(l, &t[j], &e, 100 + i * 2 + (unsigned)j))
					exit(1);
				spool_syncio_run(sio);
				record(out, t[j].id, body[j], len[j]);
				free(body[j]);
			}
		}
		spool_lane_close(l);
		spool_syncio_destroy(sio);
	}
}

static void put(struct spool_lane *l, struct spool_syncio *sio, const struct ds_envelope *env,
		const char *body, size_t len, const char *out, uint64_t cookie)
{
	struct spool_txn t;

	if (spool_txn_begin(l, &t))
		exit(1);
	for (size_t off = 0; off < len;) {
		size_t n = len - off < 7000 ? len - off : 7000;
		if (spool_txn_append(l, &t, body + off, n))
			exit(1);
		off += n;
		spool_syncio_run(sio);
	}
	if (spool_txn_commit(l, &t, env, cookie))
		exit(1);
	spool_syncio_run(sio);
	record(out, t.id, body, len);
}

int main(int argc, char **argv)
{
	struct spool_config cfg;
	struct spool_syncio *sio;
	struct spool_lane *l;
	struct spool_txn t;
	char *big;
	size_t big_len = 300000;

	if (argc == 4 && !strcmp(argv[3], "multi")) {
		multi(argv[1], argv[2]);
		return acked == 48 ? 0 : 1;
	}
	if (argc != 3)
		return 2;
	spool_config_defaults(&cfg);
	cfg.dir = argv[1];
	cfg.segment_size = 1 << 20;
	cfg.buffer_size = 256 * 1024;
	if (spool_syncio_create(&sio, on_settled, NULL) ||
	    spool_lane_open(&l, &cfg, 1, spool_syncio_ops(), sio))
		return 1;
	spool_syncio_attach(sio, l);

	{
		struct ds_rcpt r[] = {{"bob@localhost", ""}};
		struct ds_envelope e = {
			"127.0.0.1", 40001, "client.example",	"ESMTP", "alice@example.org", "", r,
			1,	     "",    1700000000123456ll, 0};
		const char *b = "Received: from client.example\r\nSubject: hi\r\n\r\nhello\r\n";
		e.body_size = strlen(b);
		put(l, sio, &e, b, strlen(b), argv[2], 1);
	}
	/* An aborted txn in between: must never show up. */
	if (spool_txn_begin(l, &t) || spool_txn_append(l, &t, "garbage", 7))
		return 1;
	spool_txn_abort(l, &t);
	{
		struct ds_rcpt r[] = {{"j\xc3\xb6rg@\xe4\xbe\x8b\xe3\x81\x88.jp", "NOTIFY=SUCCESS,FAILURE"}};
		struct ds_envelope e = {"::1",
					40002,
					"h\te\x01lo \"x\"",
					"ESMTPS",
					"we\"ird\\x@example.org",
					"SMTPUTF8 BODY=8BITMIME",
					r,
					1,
					"TLSv1.3 TLS_AES_128_GCM_SHA256",
					1700000001000000ll,
					0};
		const char *b = "Subject: =?utf-8?q?x?=\r\n\r\n\xc3\xa9t\xc3\xa9\r\n";
		e.body_size = strlen(b);
		put(l, sio, &e, b, strlen(b), argv[2], 2);
	}
	big = malloc(big_len);
	for (size_t i = 0; i < big_len; i++)
		big[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : (char)('A' + i % 26);
	{
		struct ds_rcpt r[] = {{"a@localhost", ""}, {"b@localhost", ""}, {"c@localhost", ""}};
		struct ds_envelope e = {"10.0.0.1",    1, "big", "LMTP", "",
					"SIZE=300000", r, 3,	 "",	 1700000002000000ll,
					big_len};
		put(l, sio, &e, big, big_len, argv[2], 3);
	}
	{
		struct ds_rcpt r[] = {{"empty@localhost", ""}};
		struct ds_envelope e = {"127.0.0.1",	    2, "e", "SMTP", "x@y", "", r, 1, "",
					1700000003000000ll, 0};
		put(l, sio, &e, "", 0, argv[2], 4);
	}
	free(big);
	spool_lane_close(l);
	spool_syncio_destroy(sio);
	return acked == 4 ? 0 : 1;
}
