/* SPDX-License-Identifier: MIT */
/*
 * DATA / BDAT scanner. Only CRLF.CRLF ends DATA; a stuffed dot at the
 * start of a line is removed (RFC 5321 4.5.2). A line starts only after
 * CRLF: a bare CR or bare LF never starts one, so none of the smuggling
 * sequences ("\n.\n", "\r.\r", "\r\n.\r", "\r\n\x00.\r\n", ...) can end
 * the message; they only mark it bad, and the session refuses it at the
 * real end of data.
 */
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "ds_assert.h"
#include "smtp_internal.h"

/* 0: ordinary octet, 1: CR, 2: LF, 3: NUL */
static const uint8_t scan_class[256] = {
	[0] = 3,
	['\r'] = 1,
	['\n'] = 2,
};

/* Index of the first CR, LF or NUL in buf[i..len), or len. */
static inline size_t skip_plain(const uint8_t *buf, size_t i, size_t len)
{
#ifdef __SSE2__
	/* 16 octets at a time: SSE2 is part of the x86-64 baseline. */
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n'), nul = _mm_setzero_si128();
	while (i + 16 <= len) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(buf + i));
		__m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)),
					 _mm_cmpeq_epi8(v, nul));
		unsigned mask = (unsigned)_mm_movemask_epi8(m);
		if (mask)
			return i + (size_t)__builtin_ctz(mask);
		i += 16;
	}
#endif
	while (i < len && scan_class[buf[i]] == 0)
		i++;
	return i;
}

void smtp_data_scan_init(struct smtp_data_scan *sc, bool raw, bool check, uint32_t max_line)
{
	memset(sc, 0, sizeof(*sc));
	sc->state = SMTP_SCAN_LINE_START;
	sc->raw = raw;
	sc->check = check;
	sc->max_line = max_line;
}

static inline void line_add(struct smtp_data_scan *sc, size_t n)
{
	uint64_t l = (uint64_t)sc->line_len + n;

	if (l > sc->max_line) {
		if (sc->check)
			sc->flags |= SMTP_SCAN_LONG;
		l = (uint64_t)sc->max_line + 1; /* saturate */
	}
	sc->line_len = (uint32_t)l;
}

size_t smtp_data_scan(struct smtp_data_scan *sc, const uint8_t *buf, size_t len, size_t *emit_len, bool *end)
{
	size_t i = 0;

	*end = false;
	if (!sc->check) {
		/* BINARYMIME: opaque octets. */
		DS_ASSERT(sc->raw);
		*emit_len = len;
		return len;
	}
	while (i < len) {
		switch (sc->state) {
		case SMTP_SCAN_LINE_START:
			sc->line_len = 0;
			if (!sc->raw && buf[i] == '.') {
				/* Not emitted: either the end marker or a stuffing dot. */
				sc->state = SMTP_SCAN_DOT;
				line_add(sc, 1);
				*emit_len = i;
				return i + 1;
			}
			sc->state = SMTP_SCAN_MID;
			break;
		case SMTP_SCAN_MID: {
			for (;;) {
				size_t st = i;
				i = skip_plain(buf, i, len);
				line_add(sc, i - st);
				/*
				 * CRLF and then an octet that cannot start the end marker or a
				 * stuffing dot: the next line is ordinary text, stay here
				 * (what CR, LINE_START and MID would do in three turns).
				 */
				if (i + 2 < len && buf[i] == '\r' && buf[i + 1] == '\n' &&
				    (sc->raw || buf[i + 2] != '.')) {
					line_add(sc, 2);
					sc->line_len = 0;
					i += 2;
					continue;
				}
				break;
			}
			if (i == len)
				break;
			if (buf[i] == '\r')
				sc->state = SMTP_SCAN_CR;
			else
				sc->flags |= SMTP_SCAN_BAD; /* bare LF or NUL */
			line_add(sc, 1);
			i++;
			break;
		}
		case SMTP_SCAN_CR:
			if (buf[i] == '\n') {
				line_add(sc, 1);
				i++;
				sc->state = SMTP_SCAN_LINE_START;
			} else if (buf[i] == '\r') {
				sc->flags |= SMTP_SCAN_BAD; /* the earlier CR was bare */
				line_add(sc, 1);
				i++;
			} else {
				sc->flags |= SMTP_SCAN_BAD;
				sc->state = SMTP_SCAN_MID;
			}
			break;
		case SMTP_SCAN_DOT:
			/* Entered only by returning, so the span starts here. */
			DS_ASSERT(i == 0);
			if (buf[i] == '\r') {
				sc->state = SMTP_SCAN_DOT_CR;
				line_add(sc, 1);
				i++;
			} else {
				sc->state = SMTP_SCAN_MID;
			}
			break;
		case SMTP_SCAN_DOT_CR:
			if (buf[i] == '\n') {
				/* CRLF.CRLF: the CRLF before the dot belongs to the message. */
				DS_ASSERT(i <= 1);
				sc->state = SMTP_SCAN_LINE_START;
				*emit_len = 0;
				*end = true;
				return i + 1;
			}
			/* ".\r" + other: a bare CR, the message is refused anyway. */
			sc->flags |= SMTP_SCAN_BAD;
			sc->state = buf[i] == '\r' ? SMTP_SCAN_CR : SMTP_SCAN_MID;
			line_add(sc, 1);
			i++;
			break;
		default:
			DS_ASSERT(0);
		}
	}
	/* A pending ".\r" is never content: either the end or a refused message. */
	*emit_len = sc->state == SMTP_SCAN_DOT_CR ? 0 : i;
	return i;
}

void smtp_data_scan_finish_raw(struct smtp_data_scan *sc)
{
	if (sc->check && sc->state == SMTP_SCAN_CR)
		sc->flags |= SMTP_SCAN_BAD;
}
