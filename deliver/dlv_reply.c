/* SPDX-License-Identifier: MIT */
/*
 * Reply lines from the next hop (RFC 5321 4.2), their enhanced status
 * codes (RFC 3463, RFC 2034) and EHLO keywords. Stateless.
 */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "ds_assert.h"
#include "dlv_internal.h"

static bool is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

int dlv_reply_parse(const char *line, size_t len, struct dlv_reply_line *rl)
{
	if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '5' || !is_digit(line[2]))
		return -EPROTO;
	rl->code = (uint16_t)((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
	if (len == 3) {
		rl->last = true;
		rl->text = line + 3;
		rl->text_len = 0;
		return 0;
	}
	if (line[3] != ' ' && line[3] != '-')
		return -EPROTO;
	rl->last = line[3] == ' ';
	rl->text = line + 4;
	rl->text_len = len - 4;
	return 0;
}

/* "d.ddd.ddd" at the start of s: its length, or 0. */
static size_t esc_len(const char *s, size_t len)
{
	size_t i = 0;

	if (len < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	i = 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (i < len && is_digit(s[i]) && d < 4)
			i++, d++;
		if (d == 0 || d > 3)
			return 0;
		if (part == 0) {
			if (i >= len || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < len && s[i] != ' ')
		return 0;
	return i;
}

void dlv_reply_text(struct dlv_outcome *o, uint16_t code, const char *text, size_t len)
{
	size_t e = esc_len(text, len);

	o->esc[0] = '\0';
	if (e > 0 && e < sizeof(o->esc) && text[0] - '0' == code / 100) {
		memcpy(o->esc, text, e);
		o->esc[e] = '\0';
		text += e;
		len -= e;
	}
	while (len > 0 && *text == ' ')
		text++, len--;
	while (len > 0 && text[len - 1] == ' ')
		len--;
	size_t n = DS_MIN(len, sizeof(o->text) - 1);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)text[i];
		o->text[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	o->text[n] = '\0';
}

uint32_t dlv_ehlo_keyword(const char *text, size_t len, uint64_t *size)
{
	static const struct {
		const char *name;
		uint32_t bit;
	} kw[] = {
		{"PIPELINING", DLV_EXT_PIPELINING},
		{"SIZE", DLV_EXT_SIZE},
		{"8BITMIME", DLV_EXT_8BITMIME},
		{"SMTPUTF8", DLV_EXT_SMTPUTF8},
		{"DSN", DLV_EXT_DSN},
		{"PRDR", DLV_EXT_PRDR},
		{"STARTTLS", DLV_EXT_STARTTLS},
		{"ENHANCEDSTATUSCODES", DLV_EXT_ENHANCEDCODE},
		{"CHUNKING", DLV_EXT_CHUNKING},
		{"BINARYMIME", DLV_EXT_BINARYMIME},
	};
	size_t k = 0;

	*size = 0;
	while (k < len && text[k] != ' ')
		k++;
	for (size_t i = 0; i < DS_ARRAY_SIZE(kw); i++) {
		if (strlen(kw[i].name) != k || strncasecmp(text, kw[i].name, k))
			continue;
		if (kw[i].bit == DLV_EXT_SIZE) {
			/* "SIZE" or "SIZE n": digits only; absurd values mean no limit. */
			uint64_t v = 0;
			size_t j = k;
			while (j < len && text[j] == ' ')
				j++;
			for (; j < len && is_digit(text[j]); j++) {
				if (v > (UINT64_MAX - 9) / 10) {
					v = 0;
					break;
				}
				v = v * 10 + (uint64_t)(text[j] - '0');
			}
			*size = v;
		}
		return kw[i].bit;
	}
	return 0;
}
