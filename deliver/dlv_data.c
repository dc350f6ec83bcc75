/* SPDX-License-Identifier: MIT */
/*
 * DATA encoder: the stored body as it goes over the wire after 354.
 *
 * A line starts after CRLF. A '.' at a line start is doubled (RFC 5321
 * 4.5.2). A bare CR or bare LF is sent as CRLF (RFC 5321 2.3.8: a client
 * sends CR and LF only together): core/ stores neither outside BINARYMIME,
 * which never goes over DATA, so this only guards against a damaged or
 * foreign body; it also means no sequence in the body can end the data
 * early at a next hop that takes a bare LF or CR for a line end.
 */
#include <string.h>

#include "ds_assert.h"
#include "dlv_internal.h"

void dlv_data_enc_init(struct dlv_data_enc *e)
{
	memset(e, 0, sizeof(*e));
	e->line_start = true;
}

/* Octets before the first CR or LF in src[i..len). */
static size_t plain_run(const uint8_t *src, size_t i, size_t len)
{
	size_t j = i;

	while (j < len && src[j] != '\r' && src[j] != '\n')
		j++;
	return j - i;
}

size_t dlv_data_encode(struct dlv_data_enc *e, const uint8_t *src, size_t len, uint8_t *dst)
{
	size_t i = 0, o = 0;

	while (i < len) {
		uint8_t ch = src[i];

		if (e->cr) {
			e->cr = false;
			dst[o++] = '\r';
			dst[o++] = '\n';
			e->line_start = true;
			if (ch == '\n') {
				i++;
				continue;
			}
			e->fixed++; /* a bare CR */
		}
		if (ch == '\r') {
			e->cr = true;
			e->line_start = false;
			i++;
			continue;
		}
		if (ch == '\n') {
			e->fixed++; /* a bare LF */
			dst[o++] = '\r';
			dst[o++] = '\n';
			e->line_start = true;
			i++;
			continue;
		}
		if (e->line_start && ch == '.')
			dst[o++] = '.';
		e->line_start = false;
		size_t n = plain_run(src, i, len);
		DS_ASSERT(n > 0);
		memcpy(dst + o, src + i, n);
		o += n;
		i += n;
	}
	DS_ASSERT(o <= 2 * len + 2);
	return o;
}

size_t dlv_data_finish(struct dlv_data_enc *e, uint8_t *dst)
{
	size_t o = 0;

	if (e->cr) {
		/* A body ending in a bare CR: that CR becomes the last line end. */
		e->cr = false;
		e->fixed++;
		e->line_start = true;
		dst[o++] = '\r';
		dst[o++] = '\n';
	}
	if (!e->line_start) {
		dst[o++] = '\r';
		dst[o++] = '\n';
	}
	memcpy(dst + o, ".\r\n", 3);
	o += 3;
	e->line_start = true;
	DS_ASSERT(o <= DLV_DATA_FINISH_MAX);
	return o;
}
