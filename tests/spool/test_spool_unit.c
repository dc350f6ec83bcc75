/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "crc32c.h"
#include "spool.h"
#include "spool_format.h"

static void test_crc32c_vectors(void **state)
{
	static const uint8_t zeros[32], ones[32] = {[0 ... 31] = 0xff};
	uint8_t inc[32];

	for (int i = 0; i < 32; i++)
		inc[i] = (uint8_t)i;
	assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(crc32c_sw(0, "123456789", 9), 0xE3069283u);
	/* RFC 3720 B.4 vectors. */
	assert_int_equal(crc32c(0, zeros, 32), 0x8A9136AAu);
	assert_int_equal(crc32c(0, ones, 32), 0x62A8AB43u);
	assert_int_equal(crc32c(0, inc, 32), 0x46DD794Eu);
	assert_int_equal(crc32c(0, "", 0), 0);
}

static void test_crc32c_incremental_and_sw_hw_agree(void **state)
{
	uint8_t buf[5000];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	for (size_t n = 0; n < 100; n++) {
		/* Odd alignments and lengths. */
		assert_int_equal(crc32c(0, buf + n, sizeof(buf) - 2 * n),
				 crc32c_sw(0, buf + n, sizeof(buf) - 2 * n));
		assert_int_equal(crc32c(crc32c(0, buf, n * 37), buf + n * 37, sizeof(buf) - n * 37),
				 crc32c(0, buf, sizeof(buf)));
	}
}

static void test_seg_hdr_round_trip(void **state)
{
	struct spool_seg_hdr h = {.version = SPOOL_FORMAT_VERSION,
				  .lane = 3,
				  .flags = SPOOL_SEG_F_RECYCLED,
				  .seq = 42,
				  .epoch = 0x1234567890abcdefull,
				  .created_us = 1700000000000000ll,
				  .segment_size = 1 << 20},
			     g;
	uint8_t b[SPOOL_SEG_HDR_SIZE], z[SPOOL_SEG_HDR_SIZE] = {0};

	spool_seg_hdr_encode(b, &h);
	assert_int_equal(spool_seg_hdr_decode(b, sizeof(b), &g), 0);
	assert_memory_equal(&h, &g, sizeof(h));
	assert_int_equal(spool_seg_hdr_decode(z, sizeof(z), &g), -ENODATA);
	b[20] ^= 1;
	assert_int_equal(spool_seg_hdr_decode(b, sizeof(b), &g), -EBADMSG);
}

static void test_record_encode_decode(void **state)
{
	static uint8_t seg[16384];
	struct spool_rec r;
	uint64_t off = SPOOL_SEG_DATA_OFF;

	memset(seg, 0, sizeof(seg));
	memcpy(seg + off + SPOOL_REC_HDR_SIZE, "hello", 5);
	spool_rec_encode(seg + off, SPOOL_REC_CHUNK, 5, 77, 999, 4096);
	assert_true(spool_rec_check(seg, sizeof(seg), 999, off, &r));
	assert_int_equal(r.type, SPOOL_REC_CHUNK);
	assert_int_equal(r.len, 5);
	assert_int_equal(r.txn_id, 77);
	assert_int_equal(r.durable_off, 4096);
	assert_int_equal(r.total, 48);
	assert_memory_equal(r.payload, "hello", 5);
	/* Wrong epoch (stale bytes of another segment) never parses. */
	assert_false(spool_rec_check(seg, sizeof(seg), 998, off, &r));
	/* Any flipped header bit is caught. */
	for (int bit = 0; bit < (int)SPOOL_REC_HDR_SIZE * 8; bit++) {
		seg[off + bit / 8] ^= (uint8_t)(1 << (bit % 8));
		assert_false(spool_rec_check(seg, sizeof(seg), 999, off, &r));
		seg[off + bit / 8] ^= (uint8_t)(1 << (bit % 8));
	}
	/* Zeroed space is not a record; a record running past the end is not either. */
	assert_false(spool_rec_check(seg, sizeof(seg), 999, off + 48, &r));
	assert_false(spool_rec_check(seg, off + 40, 999, off, &r));
}

static void test_envelope_round_trip(void **state)
{
	struct ds_rcpt rc[3] = {{"a@x", ""}, {"b\xc3\xa9@y", "NOTIFY=NEVER"}, {"", "ORCPT=rfc822;c@z"}};
	struct ds_envelope e = {.client_addr = "::1",
				.client_port = 65535,
				.helo = "h \"q\"",
				.proto = "ESMTPS",
				.mail_from = "",
				.mail_params = "SIZE=1 BODY=8BITMIME",
				.rcpt = rc,
				.rcpt_count = 3,
				.tls = "TLSv1.3",
				.received_at_us = -5,
				.body_size = 123456789};
	struct spool_commit c = {.body_len = 77,
				 .body_crc = 0xdeadbeef,
				 .chunk_count = 4,
				 .first_seq = 9,
				 .first_off = 4096},
			    d;
	struct ds_rcpt out[8];
	size_t n = spool_commit_size(&e);
	uint8_t *b = malloc(n);

	assert_true(n > 0);
	spool_commit_encode(b, &c, &e);
	assert_int_equal(spool_commit_decode(b, n, &d, out, 8), 0);
	assert_int_equal(d.body_len, 77);
	assert_int_equal(d.body_crc, 0xdeadbeef);
	assert_int_equal(d.chunk_count, 4);
	assert_int_equal(d.first_seq, 9);
	assert_int_equal(d.first_off, 4096);
	assert_string_equal(d.env.client_addr, "::1");
	assert_int_equal(d.env.client_port, 65535);
	assert_string_equal(d.env.helo, "h \"q\"");
	assert_string_equal(d.env.proto, "ESMTPS");
	assert_string_equal(d.env.mail_from, "");
	assert_string_equal(d.env.mail_params, "SIZE=1 BODY=8BITMIME");
	assert_string_equal(d.env.tls, "TLSv1.3");
	assert_int_equal(d.env.received_at_us, -5);
	assert_int_equal(d.env.body_size, 123456789);
	assert_int_equal(d.env.rcpt_count, 3);
	for (int i = 0; i < 3; i++) {
		assert_string_equal(d.env.rcpt[i].addr, rc[i].addr);
		assert_string_equal(d.env.rcpt[i].params, rc[i].params);
	}
	assert_int_equal(spool_commit_decode(b, n, &d, out, 2), -ENOBUFS);
	assert_int_equal(spool_commit_decode(b, n - 1, &d, out, 8), -EBADMSG);
	free(b);
}

static void test_envelope_too_large(void **state)
{
	static struct ds_rcpt rc[SPOOL_RCPT_MAX + 1];
	struct ds_envelope e = {.rcpt = rc, .rcpt_count = SPOOL_RCPT_MAX + 1};
	for (unsigned i = 0; i <= SPOOL_RCPT_MAX; i++)
		rc[i] = (struct ds_rcpt){"x@y", ""};
	assert_int_equal(spool_commit_size(&e), 0);
	e.rcpt_count = 10;
	assert_true(spool_commit_size(&e) > 0);
}

static void test_id_format(void **state)
{
	char buf[24];
	uint64_t back;
	uint64_t id = spool_id_make(3, 0x12345, 0xABCDE);

	assert_int_equal(spool_id_format(id, buf, sizeof(buf)), 16);
	assert_string_equal(buf, "03000123450ABCDE");
	assert_int_equal(spool_id_parse(buf, &back), 0);
	assert_int_equal(back, id);
	assert_int_equal(spool_id_parse("03000123450abcde", &back), 0);
	assert_int_equal(back, id);
	assert_int_equal(spool_id_parse("XYZ", &back), -EINVAL);
	assert_int_equal(spool_id_parse("", &back), -EINVAL);
	assert_int_equal(spool_id_parse("00000000000000000", &back), -EINVAL);
	/* Different lanes, segments or counters never collide. */
	assert_true(spool_id_make(1, 1, 0) != spool_id_make(0, 1, 0));
	assert_true(spool_id_make(0, 2, 0) != spool_id_make(0, 1, 0));
	assert_int_equal(spool_id_lane(id), 3);
}

static void test_seg_names(void **state)
{
	char p[256];
	assert_int_equal(spool_seg_path(p, sizeof(p), "/s", 2, 17), 0);
	assert_string_equal(p, "/s/lane-02/000000000017.seg");
	assert_int_equal(spool_seg_name_seq("000000000017.seg"), 17);
	assert_int_equal(spool_seg_name_seq("000000000017.seg.quarantine"), 0);
	assert_int_equal(spool_seg_name_seq("00000000001x.seg"), 0);
	assert_int_equal(spool_seg_path(p, 10, "/s", 2, 17), -ENAMETOOLONG);
}

static void test_config_defaults(void **state)
{
	struct spool_config c;
	spool_config_defaults(&c);
	assert_int_equal(c.segment_size, 64ull << 20);
	assert_int_equal(c.buffer_size, 8u << 20);
	assert_int_equal(c.flushes_in_flight_max, 2);
	assert_true(c.prewrite);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_vectors),
		cmocka_unit_test(test_crc32c_incremental_and_sw_hw_agree),
		cmocka_unit_test(test_seg_hdr_round_trip),
		cmocka_unit_test(test_record_encode_decode),
		cmocka_unit_test(test_envelope_round_trip),
		cmocka_unit_test(test_envelope_too_large),
		cmocka_unit_test(test_id_format),
		cmocka_unit_test(test_seg_names),
		cmocka_unit_test(test_config_defaults),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
