/* SPDX-License-Identifier: MIT */
/*
 * RFC 3464 delivery status notifications (see dlv_dsn.h for what is built
 * and why). Pure: the input, two callbacks, the stack; gmtime_r() is the
 * only libc call that is not string handling, and it reads no time zone.
 *
 * Order of work: validate, count the recipients the NOTIFY filter keeps,
 * scan the original once (header section end, 8-bit octets, bare CR/LF,
 * long lines, the boundary at a line start), decide how it is returned,
 * then write everything in one pass, reading the original a second time.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ds_assert.h"
#include "ds_ascii.h"
#include "dlv_dsn.h"

#define OUT_BUF		4096
#define READ_BUF	4096
#define FOLD_SOFT	78  /* fold header fields beyond this column when there is a space */
#define FOLD_HARD	990 /* break a run without spaces here (RFC 5322: 998 at most) */
#define TEXT_WRAP	76  /* text part */
#define LINE_OCTETS_MAX 998 /* RFC 5322 2.1.1, without the CRLF */
#define QP_LINE		76  /* RFC 2045 6.7 (5), including the soft break's "=" */
#define ADDR_MAX	512 /* an address (or decoded ORCPT) longer than this is refused or left out */
#define XADDR_MAX	(ADDR_MAX * 8 + 1) /* \x{FFFD} per octet at worst */
#define BOUNDARY_PREFIX "=_ds_"
#define DELIM_MAX	(2 + sizeof(BOUNDARY_PREFIX) - 1 + DLV_DSN_BOUNDARY_SEED_MAX)
#define DATE_MAX	40

/* ---- small helpers ---- */

static int hexval(char c)
{
	/* RFC 3461 4: upper case only, as core/ checks on input. */
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static const char hexdig[] = "0123456789ABCDEF";

/* Non-empty, printable US-ASCII without space, at most max octets. */
static bool token_ok(const char *s, size_t max)
{
	size_t n;

	if (!s)
		return false;
	n = strnlen(s, max + 1);
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

/* Every octet printable US-ASCII (space included). */
static bool ascii_printable(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

static bool has_8bit(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s >= 0x80)
			return true;
	return false;
}

/* No control characters (an address may be UTF-8, never CR, LF, NUL). */
static bool no_ctl(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
			return false;
	return true;
}

/* RFC 2046 bchars without the space. */
static bool boundary_seed_ok(const char *s)
{
	if (!token_ok(s, DLV_DSN_BOUNDARY_SEED_MAX))
		return false;
	for (; *s; s++) {
		char c = *s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
			continue;
		if (!strchr("'()+_,-./:=?", c))
			return false;
	}
	return true;
}

static bool message_id_ok(const char *s)
{
	size_t n;

	if (!token_ok(s, DLV_DSN_MSGID_MAX))
		return false;
	n = strlen(s);
	return n >= 5 && s[0] == '<' && s[n - 1] == '>' && memchr(s + 1, '@', n - 2) &&
	       !memchr(s + 1, '<', n - 2) && !memchr(s + 1, '>', n - 2);
}

/* "x.y.z" (RFC 3463): class 2, 4 or 5, subject and detail 1 to 3 digits. */
static bool status_ok(const char *s, char cls_a, char cls_b)
{
	size_t i = 0, d;

	if (!s || (s[0] != cls_a && s[0] != cls_b) || s[1] != '.')
		return false;
	i = 2;
	for (int part = 0; part < 2; part++) {
		d = 0;
		while (s[i] >= '0' && s[i] <= '9' && d < 4) {
			i++;
			d++;
		}
		if (d < 1 || d > 3)
			return false;
		if (part == 0 && s[i++] != '.')
			return false;
	}
	return s[i] == '\0';
}

static size_t fmt_date(char *buf, size_t cap, int64_t us)
{
	static const char *const wday[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char *const mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
					  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t t = (time_t)(us / 1000000);
	struct tm tm;
	int n;

	if (us <= 0 || !gmtime_r(&t, &tm) || tm.tm_year + 1900 > 9999)
		return 0;
	n = snprintf(buf, cap, "%s, %02d %s %04d %02d:%02d:%02d +0000", wday[tm.tm_wday], tm.tm_mday,
		     mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
	DS_ASSERT(n > 0 && (size_t)n < cap);
	return (size_t)n;
}

/* ---- parameters ---- */

bool dlv_dsn_param(const char *params, const char *key, const char **val, size_t *len)
{
	const char *p = params;

	if (!p)
		return false;
	while (*p) {
		while (*p == ' ')
			p++;
		const char *t = p;
		while (*p && *p != ' ')
			p++;
		const char *eq = memchr(t, '=', (size_t)(p - t));
		if (eq && ds_ascii_ieq(t, (size_t)(eq - t), key)) {
			*val = eq + 1;
			*len = (size_t)(p - eq - 1);
			return true;
		}
	}
	return false;
}

unsigned dlv_dsn_notify(const char *params)
{
	const char *v;
	size_t vl, i = 0;
	unsigned bits = 0;

	if (!dlv_dsn_param(params, "NOTIFY", &v, &vl))
		return DLV_DSN_NOTIFY_ABSENT;
	while (i < vl) {
		size_t st = i;
		while (i < vl && v[i] != ',')
			i++;
		if (ds_ascii_ieq(v + st, i - st, "never"))
			bits |= DLV_DSN_NOTIFY_NEVER;
		else if (ds_ascii_ieq(v + st, i - st, "success"))
			bits |= DLV_DSN_NOTIFY_SUCCESS;
		else if (ds_ascii_ieq(v + st, i - st, "failure"))
			bits |= DLV_DSN_NOTIFY_FAILURE;
		else if (ds_ascii_ieq(v + st, i - st, "delay"))
			bits |= DLV_DSN_NOTIFY_DELAY;
		i++;
	}
	return bits;
}

bool dlv_dsn_wanted(const char *params, enum dlv_dsn_action a)
{
	unsigned n = dlv_dsn_notify(params);

	if (n & DLV_DSN_NOTIFY_NEVER)
		return false;
	if (n & DLV_DSN_NOTIFY_ABSENT)
		return true;
	return (n & (a == DLV_DSN_FAILED ? DLV_DSN_NOTIFY_FAILURE : DLV_DSN_NOTIFY_DELAY)) != 0;
}

ssize_t dlv_dsn_xtext_decode(const char *s, size_t len, char *out, size_t cap)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			int hi, lo;
			if (i + 2 >= len)
				return -EINVAL;
			hi = hexval(s[i + 1]);
			lo = hexval(s[i + 2]);
			if (hi < 0 || lo < 0)
				return -EINVAL;
			c = (unsigned char)(hi * 16 + lo);
			i += 2;
		}
		if (c == 0)
			return -EINVAL;
		if (n + 1 >= cap)
			return -ENOSPC;
		out[n++] = (char)c;
	}
	if (cap == 0)
		return -ENOSPC;
	out[n] = '\0';
	return (ssize_t)n;
}

/*
 * RFC 6533 utf-8-addr-xtext of s: QCHAR (printable ASCII but '+', '=',
 * '\\') as is, everything else as \x{HEX} of its code point (invalid UTF-8:
 * U+FFFD per octet). keep_escapes passes '\\' through (the input already is
 * utf-8-addr-xtext with raw UTF-8 mixed in). Returns the length written.
 */
static size_t utf8_addr_xtext(const char *s, size_t n, bool keep_escapes, char *out, size_t cap)
{
	size_t o = 0;

	DS_ASSERT(cap >= n * 8 + 1);
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		uint32_t cp;
		size_t k;

		if (c >= 0x21 && c <= 0x7e && c != '+' && c != '=' && (c != '\\' || keep_escapes)) {
			out[o++] = (char)c;
			i++;
			continue;
		}
		if (c < 0x80) {
			cp = c;
			k = 1;
		} else if (c >= 0xc2 && c <= 0xdf) {
			cp = c & 0x1f;
			k = 2;
		} else if (c >= 0xe0 && c <= 0xef) {
			cp = c & 0x0f;
			k = 3;
		} else if (c >= 0xf0 && c <= 0xf4) {
			cp = c & 0x07;
			k = 4;
		} else {
			cp = 0xfffd;
			k = 0;
		}
		if (k > 1) {
			size_t j;
			for (j = 1; j < k && i + j < n && ((unsigned char)s[i + j] & 0xc0) == 0x80; j++)
				cp = (cp << 6) | ((unsigned char)s[i + j] & 0x3f);
			if (j < k || (k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
			    (k == 4 && (cp < 0x10000 || cp > 0x10ffff))) {
				cp = 0xfffd;
				k = 1;
			}
		}
		i += k ? k : 1;
		o += (size_t)snprintf(out + o, cap - o, "\\x{%02X}", (unsigned)cp);
	}
	out[o] = '\0';
	return o;
}

/* ---- output ---- */

struct out {
	const struct dlv_dsn_sink *sink;
	uint64_t total;
	int err;
	size_t n;
	char buf[OUT_BUF];
};

static void out_flush(struct out *o)
{
	if (o->n && !o->err) {
		int r = o->sink->write(o->sink->ctx, o->buf, o->n);
		if (r < 0)
			o->err = r;
		else
			o->total += o->n;
	}
	o->n = 0;
}

static void out_put(struct out *o, const void *p, size_t n)
{
	const char *s = p;

	while (n && !o->err) {
		size_t k = DS_MIN(n, sizeof(o->buf) - o->n);
		memcpy(o->buf + o->n, s, k);
		o->n += k;
		s += k;
		n -= k;
		if (o->n == sizeof(o->buf))
			out_flush(o);
	}
}

static void out_str(struct out *o, const char *s)
{
	out_put(o, s, strlen(s));
}

/* "name: value" CRLF, value without CR/LF, folded (see dlv_dsn.h). */
static void out_field(struct out *o, const char *name, const char *v, size_t vlen)
{
	size_t col = strlen(name) + 2, i = 0;

	out_str(o, name);
	out_put(o, ": ", 2);
	while (i < vlen) {
		size_t j = i, wl;
		while (j < vlen && v[j] == ' ')
			j++;
		while (j < vlen && v[j] != ' ')
			j++;
		wl = j - i;
		if (col + wl > FOLD_SOFT && v[i] == ' ') {
			out_put(o, "\r\n", 2);
			col = 0;
		}
		while (col + wl > FOLD_HARD) {
			size_t take = FOLD_HARD - col;
			out_put(o, v + i, take);
			out_put(o, "\r\n ", 3);
			col = 1;
			i += take;
			wl -= take;
		}
		out_put(o, v + i, wl);
		col += wl;
		i = j;
	}
	out_put(o, "\r\n", 2);
}

__attribute__((format(printf, 3, 4))) static void out_fieldf(struct out *o, const char *name, const char *fmt,
							     ...)
{
	char v[XADDR_MAX + 64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(v, sizeof(v), fmt, ap);
	va_end(ap);
	DS_ASSERT(n >= 0 && (size_t)n < sizeof(v));
	out_field(o, name, v, (size_t)n);
}

/*
 * A body part's text, raw or quoted-printable (RFC 2045 6.7): CRLF stays a
 * hard line break, '=' and every octet outside 33..126 are encoded, a space
 * or tab before a line break is encoded, soft breaks keep lines <= 76.
 */
struct text {
	struct out *o;
	bool qp;
	bool pend_cr;
	int pend_ws; /* a space or tab not yet written (-1: none) */
	size_t col;
};

static void qp_tok(struct text *t, const char *s, size_t n)
{
	if (t->col + n > QP_LINE - 1) {
		out_put(t->o, "=\r\n", 3);
		t->col = 0;
	}
	out_put(t->o, s, n);
	t->col += n;
}

static void qp_enc(struct text *t, unsigned char c)
{
	char e[3] = {'=', hexdig[c >> 4], hexdig[c & 15]};
	qp_tok(t, e, 3);
}

static void qp_ws_flush(struct text *t, bool at_eol)
{
	if (t->pend_ws < 0)
		return;
	if (at_eol) {
		qp_enc(t, (unsigned char)t->pend_ws);
	} else {
		char c = (char)t->pend_ws;
		qp_tok(t, &c, 1);
	}
	t->pend_ws = -1;
}

static void qp_byte(struct text *t, unsigned char c)
{
	if (t->pend_cr) {
		t->pend_cr = false;
		if (c == '\n') {
			qp_ws_flush(t, true);
			out_put(t->o, "\r\n", 2);
			t->col = 0;
			return;
		}
		qp_ws_flush(t, false);
		qp_enc(t, '\r');
	}
	if (c == '\r') {
		t->pend_cr = true;
		return;
	}
	qp_ws_flush(t, false);
	if (c == ' ' || c == '\t') {
		t->pend_ws = c;
	} else if (c >= 33 && c <= 126 && c != '=') {
		char ch = (char)c;
		qp_tok(t, &ch, 1);
	} else {
		qp_enc(t, c);
	}
}

static void text_put(struct text *t, const void *p, size_t n)
{
	const unsigned char *s = p;

	if (!t->qp) {
		out_put(t->o, s, n);
		return;
	}
	for (size_t i = 0; i < n; i++)
		qp_byte(t, s[i]);
}

static void text_str(struct text *t, const char *s)
{
	text_put(t, s, strlen(s));
}

static void text_end(struct text *t)
{
	if (!t->qp)
		return;
	if (t->pend_cr) {
		qp_ws_flush(t, false);
		qp_enc(t, '\r');
		t->pend_cr = false;
	}
	qp_ws_flush(t, true);
}

/* Words of s wrapped at TEXT_WRAP columns, every line starting with indent. */
static void text_wrap(struct text *t, const char *indent, const char *s, size_t n)
{
	size_t il = strlen(indent), col = 0, i = 0;

	while (i < n) {
		size_t st, wl;
		while (i < n && s[i] == ' ')
			i++;
		st = i;
		while (i < n && s[i] != ' ')
			i++;
		wl = i - st;
		if (!wl)
			break;
		if (col && col + 1 + wl > TEXT_WRAP) {
			text_put(t, "\r\n", 2);
			col = 0;
		}
		if (!col) {
			text_put(t, indent, il);
			col = il;
		} else {
			text_put(t, " ", 1);
			col++;
		}
		/* A word longer than a line (never in sane input) is cut into line-sized pieces. */
		while (col + wl > FOLD_HARD) {
			size_t take = FOLD_HARD - col;
			text_put(t, s + st, take);
			text_put(t, "\r\n", 2);
			text_put(t, indent, il);
			col = il;
			st += take;
			wl -= take;
		}
		text_put(t, s + st, wl);
		col += wl;
	}
	if (col)
		text_put(t, "\r\n", 2);
}

/* ---- the original message ---- */

#define F_8BIT	  0x1u /* an octet >= 0x80 */
#define F_BAD	  0x2u /* NUL, bare CR or bare LF: not even 8bit (RFC 2045 2.8) */
#define F_LONG	  0x4u /* a line over 998 octets */
#define F_COLLIDE 0x8u /* a line starts with "--" boundary */

struct scan {
	unsigned all;	   /* flags of the whole region */
	unsigned hdr;	   /* flags of the header section (up to the blank line, within hdr_cap) */
	bool blank;	   /* the blank line after the header section was seen */
	uint64_t hdr_len;  /* the header section, through the CRLF of its last line */
	uint64_t last_eol; /* just past the last line end at or below hdr_cap */
};

static int src_read(const struct dlv_dsn_source *src, uint64_t off, void *buf, size_t cap)
{
	ssize_t r = src->read(src->ctx, off, buf, cap);

	if (r < 0)
		return (int)r;
	if (r == 0 || (size_t)r > cap)
		return -EIO;
	return (int)r;
}

/* One pass over [0, len) of the original; hdr_cap bounds the header section. */
static int scan_orig(const struct dlv_dsn_source *src, uint64_t len, uint64_t hdr_cap, const char *delim,
		     size_t dlen, struct scan *sc)
{
	unsigned char buf[READ_BUF];
	unsigned line = 0; /* flags of the current line */
	uint64_t line_len = 0, off = 0;
	size_t match = 0; /* octets of delim matched at the line start; SIZE_MAX: mismatch */
	bool prev_cr = false;

	memset(sc, 0, sizeof(*sc));
	while (off < len) {
		int r = src_read(src, off, buf, (size_t)DS_MIN(len - off, (uint64_t)sizeof(buf)));
		if (r < 0)
			return r;
		for (int i = 0; i < r; i++, off++) {
			unsigned char c = buf[i];
			if (prev_cr && c != '\n') {
				/* The CR before c was bare: it is content of this line. */
				line |= F_BAD;
				line_len++;
				match = SIZE_MAX;
			}
			if (c == '\r') {
				prev_cr = true;
				continue;
			}
			if (c == '\n') {
				bool empty = prev_cr && line_len == 0 && line == 0;
				if (!prev_cr)
					line |= F_BAD;
				if (line_len > LINE_OCTETS_MAX)
					line |= F_LONG;
				prev_cr = false;
				sc->all |= line;
				if (!sc->blank && empty) {
					sc->blank = true;
					sc->hdr_len = off - 1;
				} else if (!sc->blank && off + 1 <= hdr_cap) {
					sc->hdr |= line;
					sc->last_eol = off + 1;
				}
				line = 0;
				line_len = 0;
				match = 0;
				continue;
			}
			prev_cr = false;
			if (c >= 0x80)
				line |= F_8BIT;
			else if (c == 0)
				line |= F_BAD;
			line_len++;
			if (match < dlen) {
				match = (c == (unsigned char)delim[match]) ? match + 1 : SIZE_MAX;
				if (match == dlen)
					line |= F_COLLIDE;
			}
		}
	}
	/* The region's last line, unterminated (or ending in a bare CR). */
	if (prev_cr)
		line |= F_BAD;
	if (line_len > LINE_OCTETS_MAX)
		line |= F_LONG;
	sc->all |= line;
	return 0;
}

/* Copy [0, len) of the original through t. */
static int copy_orig(const struct dlv_dsn_source *src, uint64_t len, struct text *t)
{
	unsigned char buf[READ_BUF];
	uint64_t off = 0;

	while (off < len && !t->o->err) {
		int r = src_read(src, off, buf, (size_t)DS_MIN(len - off, (uint64_t)sizeof(buf)));
		if (r < 0)
			return r;
		text_put(t, buf, (size_t)r);
		off += (uint64_t)r;
	}
	return 0;
}

/* ---- the DSN ---- */

/* Diagnostic text made printable US-ASCII on one line and bounded (dlv_dsn.h). */
static size_t diag_clean(const char *s, size_t max, char *out)
{
	size_t n = 0;
	bool cut = false;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '\r' || c == '\n' || c == '\t')
			c = ' ';
		else if (c < 0x20 || c >= 0x7f)
			c = '?';
		if (c == ' ' && (n == 0 || out[n - 1] == ' '))
			continue;
		if (n == max) {
			cut = true;
			break;
		}
		out[n++] = (char)c;
	}
	while (n && out[n - 1] == ' ')
		n--;
	if (cut) {
		memcpy(out + n, "...", 3);
		n += 3;
	}
	out[n] = '\0';
	return n;
}

static const char *rcpt_status(const struct dlv_dsn_rcpt *r)
{
	if (r->action == DLV_DSN_DELAYED)
		return status_ok(r->status, '4', '4') ? r->status : "4.0.0";
	return status_ok(r->status, '5', '4') ? r->status : "5.0.0";
}

/* "rfc822; addr" for printable ASCII, else "utf-8; " utf-8-addr-xtext. */
static void out_addr_field(struct out *o, const char *name, const char *addr, size_t n)
{
	char x[XADDR_MAX];

	if (ascii_printable(addr, n)) {
		out_fieldf(o, name, "rfc822; %.*s", (int)n, addr);
		return;
	}
	utf8_addr_xtext(addr, n, false, x, sizeof(x));
	out_fieldf(o, name, "utf-8; %s", x);
}

/* Original-Recipient from the stored ORCPT= (RFC 3461 4.2), or nothing when absent or unusable. */
static void out_orcpt(struct out *o, const char *params)
{
	const char *v, *semi;
	size_t vl, tl;
	char dec[ADDR_MAX + 1];
	ssize_t dl;

	if (!dlv_dsn_param(params, "ORCPT", &v, &vl) || vl > ADDR_MAX)
		return;
	semi = memchr(v, ';', vl);
	if (!semi || semi == v)
		return;
	tl = (size_t)(semi - v);
	for (size_t i = 0; i < tl; i++)
		if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
		      (v[i] >= '0' && v[i] <= '9') || v[i] == '-'))
			return;
	if (ds_ascii_ieq(v, tl, "utf-8")) {
		/* RFC 6533: already utf-8-addr-xtext (maybe with raw UTF-8 under SMTPUTF8): no "+HH". */
		char x[XADDR_MAX];
		if (!no_ctl(semi + 1, vl - tl - 1) || vl - tl - 1 == 0)
			return;
		utf8_addr_xtext(semi + 1, vl - tl - 1, true, x, sizeof(x));
		out_fieldf(o, "Original-Recipient", "utf-8; %s", x);
		return;
	}
	dl = dlv_dsn_xtext_decode(semi + 1, vl - tl - 1, dec, sizeof(dec));
	if (dl <= 0)
		return;
	if (ascii_printable(dec, (size_t)dl)) {
		if (ds_ascii_ieq(v, tl, "rfc822"))
			out_fieldf(o, "Original-Recipient", "rfc822; %s", dec);
		else
			out_fieldf(o, "Original-Recipient", "%.*s; %s", (int)tl, v, dec);
	} else if (ds_ascii_ieq(v, tl, "rfc822") && no_ctl(dec, (size_t)dl)) {
		out_addr_field(o, "Original-Recipient", dec, (size_t)dl);
	}
}

struct plan {
	const struct dlv_dsn_input *in;
	uint32_t diag_max;
	uint32_t failed, delayed;
	bool ret_hdrs;
	enum dlv_dsn_orig orig;
	uint64_t orig_len; /* bytes of the original returned */
	bool orig_qp;	   /* headers part quoted-printable */
	bool body_8bit;
	bool text_utf8;
	bool collided;
	const char *why_headers; /* NULL when the whole message is returned */
	char boundary[DELIM_MAX];
};

static void out_boundary(struct out *o, const struct plan *p, bool last)
{
	out_put(o, "\r\n--", 4);
	out_str(o, p->boundary);
	out_str(o, last ? "--\r\n" : "\r\n");
}

static void write_text_part(struct out *o, const struct plan *p)
{
	const struct dlv_dsn_input *in = p->in;
	struct text t = {.o = o, .qp = p->text_utf8, .pend_ws = -1};
	char line[XADDR_MAX + 256], diag[DLV_DSN_DIAG_MAX_LIMIT + 4], date[DATE_MAX];
	int n;

	out_str(o, "Content-Description: Notification\r\n");
	if (p->text_utf8)
		out_str(o, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: "
			   "quoted-printable\r\n");
	else
		out_str(o, "Content-Type: text/plain; charset=us-ascii\r\n");
	out_str(o, "\r\n");

	n = snprintf(line, sizeof(line), "This is the mail delivery system at %s.", in->reporting_mta);
	text_wrap(&t, "", line, (size_t)n);
	text_str(&t, "\r\n");
	for (int pass = 0; pass < 2; pass++) {
		enum dlv_dsn_action a = pass == 0 ? DLV_DSN_FAILED : DLV_DSN_DELAYED;
		if (a == DLV_DSN_FAILED && p->failed) {
			const char *s =
				"Your message could not be delivered to the following recipients. This is "
				"final: delivery to them will not be tried again.";
			text_wrap(&t, "", s, strlen(s));
		} else if (a == DLV_DSN_DELAYED && p->delayed) {
			const char *s = "Delivery of your message to the following recipients has been "
					"delayed. It is "
					"still being retried; you do not need to send it again.";
			text_wrap(&t, "", s, strlen(s));
		} else {
			continue;
		}
		text_str(&t, "\r\n");
		for (uint32_t i = 0; i < in->rcpt_count; i++) {
			const struct dlv_dsn_rcpt *r = &in->rcpt[i];
			if (r->action != a || !dlv_dsn_wanted(r->params, a))
				continue;
			text_str(&t, "<");
			text_str(&t, r->addr);
			text_str(&t, ">\r\n");
			n = snprintf(line, sizeof(line), "Status %s", rcpt_status(r));
			if (token_ok(r->remote_mta, DLV_DSN_NAME_MAX))
				n += snprintf(line + n, sizeof(line) - (size_t)n, ", reported by %s",
					      r->remote_mta);
			if (a == DLV_DSN_DELAYED && fmt_date(date, sizeof(date), r->retry_until_us))
				n += snprintf(line + n, sizeof(line) - (size_t)n, ", retried until %s", date);
			text_wrap(&t, "    ", line, (size_t)n);
			if (r->diag && r->diag[0]) {
				size_t dl = diag_clean(r->diag, p->diag_max, diag);
				text_wrap(&t, "    ", diag, dl);
			}
			text_str(&t, "\r\n");
		}
	}
	if (p->why_headers) {
		n = snprintf(line, sizeof(line), "The header section of your message is attached (%s).",
			     p->why_headers);
	} else {
		n = snprintf(line, sizeof(line), "Your message is attached.");
	}
	text_wrap(&t, "", line, (size_t)n);
	text_end(&t);
}

static void write_status_part(struct out *o, const struct plan *p)
{
	const struct dlv_dsn_input *in = p->in;
	const struct ds_envelope *env = in->env;
	char date[DATE_MAX], diag[DLV_DSN_DIAG_MAX_LIMIT + 4], envid[DLV_DSN_NAME_MAX + 1];
	const char *v;
	size_t vl;

	out_str(o, "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n");
	if (dlv_dsn_param(env->mail_params, "ENVID", &v, &vl)) {
		ssize_t n = dlv_dsn_xtext_decode(v, vl, envid, sizeof(envid));
		if (n > 0 && ascii_printable(envid, (size_t)n))
			out_field(o, "Original-Envelope-Id", envid, (size_t)n);
	}
	out_fieldf(o, "Reporting-MTA", "dns; %s", in->reporting_mta);
	if (token_ok(env->helo, DLV_DSN_NAME_MAX)) {
		if (token_ok(env->client_addr, DLV_DSN_NAME_MAX))
			out_fieldf(o, "Received-From-MTA", "dns; %s ([%s])", env->helo, env->client_addr);
		else
			out_fieldf(o, "Received-From-MTA", "dns; %s", env->helo);
	}
	if (fmt_date(date, sizeof(date), env->received_at_us))
		out_field(o, "Arrival-Date", date, strlen(date));

	for (uint32_t i = 0; i < in->rcpt_count; i++) {
		const struct dlv_dsn_rcpt *r = &in->rcpt[i];
		if (!dlv_dsn_wanted(r->params, r->action))
			continue;
		out_put(o, "\r\n", 2);
		out_orcpt(o, r->params);
		out_addr_field(o, "Final-Recipient", r->addr, strlen(r->addr));
		out_str(o, r->action == DLV_DSN_FAILED ? "Action: failed\r\n" : "Action: delayed\r\n");
		out_fieldf(o, "Status", "%s", rcpt_status(r));
		if (token_ok(r->remote_mta, DLV_DSN_NAME_MAX))
			out_fieldf(o, "Remote-MTA", "dns; %s", r->remote_mta);
		if (r->diag && r->diag[0]) {
			const char *type = token_ok(r->diag_type, 32) && !strchr(r->diag_type, ';')
						   ? r->diag_type
						   : "smtp";
			size_t dl = diag_clean(r->diag, p->diag_max, diag);
			char v2[DLV_DSN_DIAG_MAX_LIMIT + 48];
			int n = snprintf(v2, sizeof(v2), "%s; %s", type, diag);
			DS_ASSERT(n > 0 && (size_t)n < sizeof(v2) && dl < sizeof(diag));
			out_field(o, "Diagnostic-Code", v2, (size_t)n);
		}
		if (fmt_date(date, sizeof(date), r->last_attempt_us))
			out_field(o, "Last-Attempt-Date", date, strlen(date));
		if (r->action == DLV_DSN_DELAYED && fmt_date(date, sizeof(date), r->retry_until_us))
			out_field(o, "Will-Retry-Until", date, strlen(date));
	}
}

static int write_orig_part(struct out *o, const struct plan *p)
{
	struct text t = {.o = o, .qp = false, .pend_ws = -1};
	int r;

	if (p->orig == DLV_DSN_ORIG_FULL) {
		out_str(o, "Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n");
		if (p->body_8bit)
			out_str(o, "Content-Transfer-Encoding: 8bit\r\n");
	} else {
		out_str(o, "Content-Description: Undelivered Message Headers\r\nContent-Type: "
			   "text/rfc822-headers\r\n");
		if (p->orig_qp) {
			out_str(o, "Content-Transfer-Encoding: quoted-printable\r\n");
			t.qp = true;
		}
	}
	out_str(o, "\r\n");
	r = copy_orig(&p->in->orig, p->orig_len, &t);
	if (r)
		return r;
	text_end(&t);
	return 0;
}

static int validate(const struct dlv_dsn_input *in, struct plan *p)
{
	const struct ds_envelope *env = in->env;
	char date[DATE_MAX];

	if (!env || !env->mail_from)
		return -EINVAL;
	if (env->mail_from[0] == '\0')
		return -EDESTADDRREQ;
	if (!token_ok(in->reporting_mta, DLV_DSN_NAME_MAX) || !message_id_ok(in->message_id) ||
	    !boundary_seed_ok(in->boundary_seed) || !fmt_date(date, sizeof(date), in->now_us) ||
	    !in->orig.read)
		return -EINVAL;
	if (strnlen(env->mail_from, ADDR_MAX + 1) > ADDR_MAX ||
	    !no_ctl(env->mail_from, strlen(env->mail_from)))
		return -EINVAL;
	if (!in->rcpt || in->rcpt_count == 0 || in->rcpt_count > DLV_DSN_RCPT_MAX)
		return -EINVAL;
	if (in->diag_max > DLV_DSN_DIAG_MAX_LIMIT)
		return -EINVAL;
	p->diag_max = in->diag_max ? in->diag_max : DLV_DSN_DIAG_MAX_DEFAULT;
	for (uint32_t i = 0; i < in->rcpt_count; i++) {
		const struct dlv_dsn_rcpt *r = &in->rcpt[i];
		size_t n;
		if (!r->addr || (r->action != DLV_DSN_FAILED && r->action != DLV_DSN_DELAYED))
			return -EINVAL;
		n = strnlen(r->addr, ADDR_MAX + 1);
		if (n == 0 || n > ADDR_MAX || !no_ctl(r->addr, n))
			return -EINVAL;
		if (!dlv_dsn_wanted(r->params, r->action))
			continue;
		if (r->action == DLV_DSN_FAILED)
			p->failed++;
		else
			p->delayed++;
		if (has_8bit(r->addr))
			p->text_utf8 = true;
	}
	if (p->failed + p->delayed == 0)
		return -ENODATA;
	return 0;
}

static int plan_orig(const struct dlv_dsn_input *in, struct plan *p)
{
	uint64_t full_max = in->orig_full_max ? in->orig_full_max : DLV_DSN_ORIG_FULL_MAX_DEFAULT;
	uint64_t hdrs_max = in->orig_hdrs_max ? in->orig_hdrs_max : DLV_DSN_ORIG_HDRS_MAX_DEFAULT;
	uint64_t size = in->orig.size, region;
	bool want_full = p->failed > 0 && !p->ret_hdrs && size <= full_max;
	char delim[DELIM_MAX + 2];
	struct scan sc;
	int r;

	snprintf(delim, sizeof(delim), "--%s", p->boundary);
	region = want_full ? size : DS_MIN(size, hdrs_max + 2);
	r = scan_orig(&in->orig, region, hdrs_max, delim, strlen(delim), &sc);
	if (r)
		return r;
	if (want_full && !(sc.all & (F_BAD | F_LONG | F_COLLIDE)) && (!(sc.all & F_8BIT) || in->allow_8bit)) {
		p->orig = DLV_DSN_ORIG_FULL;
		p->orig_len = size;
		p->body_8bit = (sc.all & F_8BIT) != 0;
		return 0;
	}
	p->collided = (sc.all & F_COLLIDE) != 0;
	if (p->failed == 0)
		p->why_headers = "the message is not lost";
	else if (p->ret_hdrs)
		p->why_headers = "you asked for headers only";
	else if (size > full_max)
		p->why_headers = "the message is too large to be returned";
	else if (sc.all & F_8BIT)
		p->why_headers = "the message has 8-bit content";
	else
		p->why_headers = "the message cannot be returned unchanged";
	p->orig = DLV_DSN_ORIG_HEADERS;
	if (sc.blank && sc.hdr_len <= hdrs_max) {
		p->orig_len = sc.hdr_len;
		p->orig_qp = (sc.hdr & (F_8BIT | F_BAD | F_LONG | F_COLLIDE)) != 0;
	} else if (!sc.blank && size <= hdrs_max) {
		/* No blank line at all: the whole message is its header section. */
		p->orig_len = size;
		p->orig_qp = (sc.all & (F_8BIT | F_BAD | F_LONG | F_COLLIDE)) != 0;
	} else {
		p->orig = DLV_DSN_ORIG_HEADERS_CUT;
		if (sc.last_eol) {
			p->orig_len = sc.last_eol;
			p->orig_qp = (sc.hdr & (F_8BIT | F_BAD | F_LONG | F_COLLIDE)) != 0;
		} else {
			/* Not one line end in hdrs_max octets: cut mid-line, always encoded. */
			p->orig_len = DS_MIN(size, hdrs_max);
			p->orig_qp = true;
		}
	}
	return 0;
}

int dlv_dsn_build(const struct dlv_dsn_input *in, const struct dlv_dsn_sink *out, struct dlv_dsn_result *res)
{
	struct plan p = {.in = in};
	struct out ob, *o = &ob;
	char date[DATE_MAX];
	const char *v;
	size_t vl;
	int r;

	if (res)
		memset(res, 0, sizeof(*res));
	if (!in || !out || !out->write)
		return -EINVAL;
	r = validate(in, &p);
	if (r)
		return r;
	if (has_8bit(in->env->mail_from))
		p.text_utf8 = true;
	p.ret_hdrs = dlv_dsn_param(in->env->mail_params, "RET", &v, &vl) && ds_ascii_ieq(v, vl, "hdrs");
	snprintf(p.boundary, sizeof(p.boundary), "%s%s", BOUNDARY_PREFIX, in->boundary_seed);
	r = plan_orig(in, &p);
	if (r)
		return r;

	o->sink = out;
	o->total = 0;
	o->err = 0;
	o->n = 0;

	fmt_date(date, sizeof(date), in->now_us);
	out_field(o, "Date", date, strlen(date));
	out_fieldf(o, "From", "MAILER-DAEMON@%s (Mail Delivery System)", in->reporting_mta);
	out_fieldf(o, "To", "<%s>", in->env->mail_from);
	out_str(o, p.failed ? "Subject: Undelivered Mail Returned to Sender\r\n"
			    : "Subject: Delayed Mail (still being retried)\r\n");
	out_field(o, "Message-ID", in->message_id, strlen(in->message_id));
	out_str(o, "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
	out_str(o, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"");
	out_str(o, p.boundary);
	out_str(o, "\"\r\n");
	out_str(o,
		p.body_8bit ? "Content-Transfer-Encoding: 8bit\r\n" : "Content-Transfer-Encoding: 7bit\r\n");
	out_str(o, "\r\nThis is a MIME-encapsulated message.\r\n");

	out_boundary(o, &p, false);
	write_text_part(o, &p);
	out_boundary(o, &p, false);
	write_status_part(o, &p);
	out_boundary(o, &p, false);
	r = write_orig_part(o, &p);
	if (!r) {
		out_boundary(o, &p, true);
		out_flush(o);
		r = o->err;
	}
	if (!r && res) {
		res->size = o->total;
		res->failed = p.failed;
		res->delayed = p.delayed;
		res->orig = p.orig;
		res->body_8bit = p.body_8bit;
		res->smtputf8 = has_8bit(in->env->mail_from);
		res->boundary_collided = p.collided;
	}
	return r;
}

/* ---- sinks and sources ---- */

int dlv_dsn_buf_write(void *ctx, const void *buf, size_t len)
{
	struct dlv_dsn_buf *b = ctx;

	if (len > b->max || b->len > b->max - len)
		return -EFBIG;
	if (b->len + len > b->cap) {
		size_t ncap = b->cap ? b->cap : 4096;
		char *p;
		while (ncap < b->len + len)
			ncap *= 2;
		ncap = DS_MIN(ncap, b->max);
		p = realloc(b->data, ncap);
		if (!p)
			return -ENOMEM;
		b->data = p;
		b->cap = ncap;
	}
	memcpy(b->data + b->len, buf, len);
	b->len += len;
	return 0;
}

void dlv_dsn_buf_free(struct dlv_dsn_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

ssize_t dlv_dsn_mem_read(void *ctx, uint64_t off, void *buf, size_t cap)
{
	const struct dlv_dsn_mem *m = ctx;
	size_t n;

	if (off >= m->len)
		return 0;
	n = DS_MIN(cap, m->len - (size_t)off);
	memcpy(buf, (const char *)m->data + off, n);
	return (ssize_t)n;
}
