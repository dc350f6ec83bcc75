/* SPDX-License-Identifier: MIT */
/*
 * Random-input loop for io_proxy_parse(), meant to run under ASan (no
 * libFuzzer needed): every input is parsed from an exactly sized heap buffer
 * at every prefix length, so any read past len is a crash. Inputs are pure
 * random bytes and mutations of valid v1/v2 headers (the interesting ones).
 * Checks the incremental contract on each input:
 *   - ret <= len; 0 only below IO_PROXY_MAX_BYTES;
 *   - once a prefix is -EINVAL every longer prefix is -EINVAL;
 *   - once a prefix gives n > 0 every longer prefix gives the same n.
 * Seed and iteration count: argv[1], argv[2] (defaults fixed, reproducible).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

#define RAND_MAX_INPUT_BYTES (IO_PROXY_MAX_BYTES + 64)

static uint64_t rng_state;

static uint32_t rng(void)
{
	/* xorshift64*: deterministic for a seed, good enough for mutation. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 2685821657736338717ULL) >> 32);
}

static const char *const seeds_v1[] = {
	"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n",
	"PROXY TCP6 2001:db8::1 ::1 1111 2222\r\n",
	"PROXY UNKNOWN\r\n",
	"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 "
	"65535\r\n",
};

static size_t make_v2(uint8_t *out, size_t cap)
{
	static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
	size_t addr = (rng() & 1) ? 12 : 36;
	size_t tlv = rng() % 64;
	size_t body = addr + (tlv ? tlv + 3 : 0);

	if (16 + body > cap)
		return 0;
	memcpy(out, sig, 12);
	out[12] = 0x21;
	out[13] = addr == 12 ? 0x11 : 0x21;
	out[14] = (uint8_t)(body >> 8);
	out[15] = (uint8_t)body;
	for (size_t i = 0; i < body; i++)
		out[16 + i] = (uint8_t)rng();
	if (tlv) {
		out[16 + addr] = 0x04;
		out[16 + addr + 1] = 0;
		out[16 + addr + 2] = (uint8_t)tlv;
	}
	return 16 + body;
}

static size_t make_input(uint8_t *buf)
{
	size_t n;

	switch (rng() % 4) {
	case 0: /* pure random bytes, sometimes with a valid first byte */
		n = rng() % RAND_MAX_INPUT_BYTES;
		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)rng();
		if (n && (rng() & 1))
			buf[0] = (rng() & 1) ? 'P' : '\r';
		return n;
	case 1:
	case 2: {
		const char *s = seeds_v1[rng() % (sizeof(seeds_v1) / sizeof(seeds_v1[0]))];

		n = strlen(s);
		memcpy(buf, s, n);
		break;
	}
	default:
		n = make_v2(buf, RAND_MAX_INPUT_BYTES);
		break;
	}
	/* A few mutations: flip, overwrite with an interesting byte, truncate, extend. */
	for (uint32_t m = rng() % 4; m > 0 && n > 0; m--) {
		static const uint8_t interesting[] = {'\r', '\n', ' ', '0', '9', ':', '.', 0, 0xff, 0x02};
		size_t at = rng() % n;

		switch (rng() % 4) {
		case 0:
			buf[at] ^= (uint8_t)(1u << (rng() % 8));
			break;
		case 1:
			buf[at] = interesting[rng() % sizeof(interesting)];
			break;
		case 2:
			n = at;
			break;
		default: {
			size_t extra = rng() % 32;

			if (n + extra > RAND_MAX_INPUT_BYTES)
				extra = RAND_MAX_INPUT_BYTES - n;
			for (size_t i = 0; i < extra; i++)
				buf[n + i] = (uint8_t)rng();
			n += extra;
			break;
		}
		}
	}
	return n;
}

static int check_input(const uint8_t *in, size_t n, unsigned long iter)
{
	int settled = 0; /* first non-zero answer */
	size_t settled_at = 0;
	struct io_proxy_result r;

	for (size_t len = 0; len <= n; len++) {
		uint8_t *copy = malloc(len ? len : 1);
		int ret;

		if (!copy)
			abort();
		memcpy(copy, in, len);
		ret = io_proxy_parse(len ? copy : NULL, len, &r);
		free(copy);
		if (ret != 0 && ret != -EINVAL && (ret < 0 || (size_t)ret > len)) {
			fprintf(stderr, "iter %lu: bad return %d for len %zu\n", iter, ret, len);
			return -1;
		}
		if (ret == 0 && len >= IO_PROXY_MAX_BYTES) {
			fprintf(stderr, "iter %lu: still undecided at %zu bytes\n", iter, len);
			return -1;
		}
		if (ret > 0 &&
		    (r.version < 1 || r.version > 2 || !memchr(r.src_addr, 0, sizeof(r.src_addr)))) {
			fprintf(stderr, "iter %lu: bad result\n", iter);
			return -1;
		}
		if (settled == 0 && ret != 0) {
			settled = ret;
			settled_at = len;
		} else if (settled != 0 && ret != settled) {
			fprintf(stderr, "iter %lu: answer %d at len %zu changed to %d at len %zu\n", iter,
				settled, settled_at, ret, len);
			return -1;
		}
	}
	return settled;
}

int main(int argc, char **argv)
{
	uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 0) : 0x5eed2026ULL;
	unsigned long iters = argc > 2 ? strtoul(argv[2], NULL, 0) : 20000;
	static uint8_t buf[RAND_MAX_INPUT_BYTES];
	unsigned long ok = 0, bad = 0, more = 0;

	rng_state = seed ? seed : 1;
	for (unsigned long i = 0; i < iters; i++) {
		size_t n = make_input(buf);
		int ret = check_input(buf, n, i);

		if (ret == -1) {
			fprintf(stderr, "FAIL seed=%llu; input (%zu bytes):", (unsigned long long)seed, n);
			for (size_t j = 0; j < n; j++)
				fprintf(stderr, " %02x", buf[j]);
			fprintf(stderr, "\n");
			return 1;
		}
		if (ret > 0)
			ok++;
		else if (ret == -EINVAL)
			bad++;
		else
			more++;
	}
	printf("proxy random: %lu inputs, %lu accepted, %lu rejected, %lu incomplete\n", iters, ok, bad,
	       more);
	/* The generator must reach both verdicts, or the test checks nothing. */
	if (ok == 0 || bad == 0) {
		fprintf(stderr, "generator reached no accepted or no rejected input\n");
		return 1;
	}
	return 0;
}
