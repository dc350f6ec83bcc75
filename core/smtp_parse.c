/* SPDX-License-Identifier: MIT */
/*
 * Stateless parsers: command lines, paths (RFC 5321 4.1.2), ESMTP
 * parameters (RFC 1870, 6152, 3030, 3461, 6531, PRDR), xtext, domains.
 * Every function reads only the bytes it is given and never allocates.
 */
#include <errno.h>
#include <string.h>
#include <arpa/inet.h>

#include "ds_assert.h"
#include "ds_ascii.h"
#include "smtp_internal.h"

static bool iprefix(const char *a, size_t alen, const char *b)
{
	size_t blen = strlen(b);

	if (alen < blen)
		return false;
	for (size_t i = 0; i < blen; i++)
		if (ds_ascii_lower(a[i]) != b[i])
			return false;
	return true;
}

static const struct {
	const char *name;
	enum smtp_verb verb;
} verbs[] = {
	{"helo", SMTP_VERB_HELO}, {"ehlo", SMTP_VERB_EHLO},	    {"lhlo", SMTP_VERB_LHLO},
	{"mail", SMTP_VERB_MAIL}, {"rcpt", SMTP_VERB_RCPT},	    {"data", SMTP_VERB_DATA},
	{"bdat", SMTP_VERB_BDAT}, {"rset", SMTP_VERB_RSET},	    {"noop", SMTP_VERB_NOOP},
	{"quit", SMTP_VERB_QUIT}, {"vrfy", SMTP_VERB_VRFY},	    {"expn", SMTP_VERB_EXPN},
	{"help", SMTP_VERB_HELP}, {"starttls", SMTP_VERB_STARTTLS},
};

int smtp_parse_command(const uint8_t *line, size_t len, struct smtp_cmd *cmd)
{
	DS_ASSERT(len >= 1 && line[len - 1] == '\n');
	memset(cmd, 0, sizeof(*cmd));
	/* Only CRLF ends a line; a bare CR or bare LF is an error, never a separator. */
	if (len < 2 || line[len - 2] != '\r')
		return -EILSEQ;
	size_t n = len - 2;
	if (memchr(line, '\r', n) || memchr(line, '\n', n))
		return -EILSEQ;
	if (memchr(line, '\0', n))
		return -EBADMSG;

	const char *p = (const char *)line;
	size_t vlen = 0;
	while (vlen < n && p[vlen] != ' ')
		vlen++;
	for (size_t i = 0; i < DS_ARRAY_SIZE(verbs); i++) {
		if (ds_ascii_ieq(p, vlen, verbs[i].name)) {
			cmd->verb = verbs[i].verb;
			break;
		}
	}
	size_t a = vlen;
	while (a < n && p[a] == ' ')
		a++;
	if (cmd->verb == SMTP_VERB_MAIL || cmd->verb == SMTP_VERB_RCPT) {
		const char *kw = cmd->verb == SMTP_VERB_MAIL ? "from:" : "to:";
		/* Exactly one space between verb and keyword (RFC 5321 4.1.1.2). */
		if (vlen + 1 != a || !iprefix(p + a, n - a, kw))
			return -EINVAL;
		a += strlen(kw);
		/* Tolerate "MAIL FROM: <a>": widespread, and unambiguous. */
		while (a < n && p[a] == ' ')
			a++;
	}
	while (n > a && p[n - 1] == ' ')
		n--;
	cmd->arg = p + a;
	cmd->arg_len = n - a;
	return 0;
}

/* RFC 5322 atext, as used in RFC 5321 Atom. */
static bool is_atext(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static bool is_letdig(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool smtp_utf8_valid(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;

	while (i < len) {
		unsigned char c = u[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t need;
		uint32_t cp;
		if (c >= 0xc2 && c <= 0xdf) {
			need = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			need = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			need = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i - 1 < need)
			return false;
		for (size_t k = 1; k <= need; k++) {
			if ((u[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (u[i + k] & 0x3f);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += need + 1;
	}
	return true;
}

/* Domain = sub-domain *("." sub-domain); U-labels (UTF-8) allowed when utf8. */
static bool domain_valid(const char *d, size_t len, bool utf8)
{
	size_t label = 0;

	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c == '.') {
			if (label == 0 || d[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (c >= 0x80) {
			if (!utf8)
				return false;
		} else if (c == '-') {
			if (label == 0)
				return false;
		} else if (!is_letdig(c)) {
			return false;
		}
		if (++label > 63)
			return false;
	}
	return label != 0 && d[len - 1] != '-';
}

static bool literal_valid(const char *s, size_t len)
{
	/* s is the text between [ and ]. */
	char buf[64];

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	unsigned char addr[16];
	if (iprefix(s, len, "ipv6:"))
		return inet_pton(AF_INET6, buf + 5, addr) == 1;
	if (inet_pton(AF_INET, buf, addr) == 1)
		return true;
	/* General-address-literal: Standardized-tag ":" 1*dcontent */
	size_t i = 0;
	while (i < len && (is_letdig((unsigned char)s[i]) || s[i] == '-'))
		i++;
	if (i == 0 || i >= len - 1 || s[i] != ':' || s[i - 1] == '-')
		return false;
	for (i++; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!((c >= 33 && c <= 90) || (c >= 94 && c <= 126)))
			return false;
	}
	return true;
}

/* A-d-l: "@dom,@dom:" source route, accepted and ignored (RFC 5321 4.1.2, C.); *i past its ':'. */
static int path_skip_route(const char *s, size_t len, size_t *i)
{
	size_t k = *i;
	if (s[k] != '@')
		return 0;
	while (k < len && s[k] != ':') {
		if (s[k] == '>' || s[k] == '<' || s[k] == ' ' || s[k] == '"')
			return -EINVAL;
		k++;
	}
	if (k >= len)
		return -EINVAL;
	*i = k + 1;
	return 0;
}

/* The Local-part at *i, a Quoted-string or a Dot-string (RFC 5321 4.1.2); *i past it. */
static int path_local_part(const char *s, size_t len, size_t *i, bool *utf8)
{
	size_t k = *i;
	if (k < len && s[k] == '"') {
		k++;
		for (;;) {
			if (k >= len)
				return -EINVAL;
			unsigned char c = (unsigned char)s[k];
			if (c == '"')
				break;
			if (c == '\\') {
				if (k + 1 >= len || (unsigned char)s[k + 1] < 32 ||
				    (unsigned char)s[k + 1] > 126)
					return -EINVAL;
				k += 2;
				continue;
			}
			if (c >= 0x80)
				*utf8 = true;
			else if (c < 32 || c == 127)
				return -EINVAL;
			k++;
		}
		*i = k + 1;
		return 0;
	}
	bool dot_ok = false;
	while (k < len) {
		unsigned char c = (unsigned char)s[k];
		if (c == '.') {
			if (!dot_ok)
				return -EINVAL;
			dot_ok = false;
		} else if (is_atext(c) || c >= 0x80) {
			if (c >= 0x80)
				*utf8 = true;
			dot_ok = true;
		} else {
			break;
		}
		k++;
	}
	if (!dot_ok)
		return -EINVAL;
	*i = k;
	return 0;
}

/* The domain of a mailbox, d[0, dlen): a name, or an address literal in brackets. */
static int path_domain(const char *d, size_t dlen, struct smtp_path *p, bool *utf8)
{
	if (dlen >= 2 && d[0] == '[') {
		if (d[dlen - 1] != ']' || !literal_valid(d + 1, dlen - 2))
			return -EINVAL;
		p->domain_literal = true;
		return 0;
	}
	for (size_t k = 0; k < dlen; k++)
		if ((unsigned char)d[k] >= 0x80)
			*utf8 = true;
	return domain_valid(d, dlen, true) ? 0 : -EINVAL;
}

int smtp_parse_path(const char *s, size_t len, bool allow_utf8, size_t *consumed, struct smtp_path *p)
{
	memset(p, 0, sizeof(*p));
	if (len < 2 || s[0] != '<')
		return -EINVAL;
	if (s[1] == '>') {
		p->null_path = true;
		*consumed = 2;
		return 0;
	}
	size_t i = 1;
	bool utf8 = false;
	int rc = path_skip_route(s, len, &i);
	if (rc)
		return rc;
	size_t start = i;
	rc = path_local_part(s, len, &i, &utf8);
	if (rc)
		return rc;
	size_t local_len = i - start;
	if (i >= len)
		return -EINVAL;
	if (s[i] == '>') {
		/* Only <postmaster> may lack a domain (RFC 5321 4.5.1). */
		if (!ds_ascii_ieq(s + start, local_len, "postmaster"))
			return -EINVAL;
		p->mailbox = s + start;
		p->mailbox_len = local_len;
		*consumed = i + 1;
		return 0;
	}
	if (s[i] != '@')
		return -EINVAL;
	if (local_len > SMTP_LOCAL_PART_MAX)
		return -ENAMETOOLONG;
	i++;
	size_t dstart = i;
	while (i < len && s[i] != '>') {
		if (s[i] == '<' || s[i] == ' ' || s[i] == '"')
			return -EINVAL;
		i++;
	}
	if (i >= len)
		return -EINVAL;
	size_t dlen = i - dstart;
	if (i + 1 > SMTP_PATH_MAX || dlen > SMTP_DOMAIN_MAX)
		return -ENAMETOOLONG;
	rc = path_domain(s + dstart, dlen, p, &utf8);
	if (rc)
		return rc;
	p->mailbox = s + start;
	p->mailbox_len = i - start;
	p->domain = s + dstart;
	p->domain_len = dlen;
	p->utf8 = utf8;
	if (utf8 && (!allow_utf8 || !smtp_utf8_valid(p->mailbox, p->mailbox_len)))
		return -EILSEQ;
	*consumed = i + 1;
	return 0;
}

int smtp_parse_u64(const char *s, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;

	if (len == 0)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -EOVERFLOW;
		v = v * 10 + d;
	}
	if (v > max)
		return -EOVERFLOW;
	*out = v;
	return 0;
}

static int hexval(char c)
{
	/* RFC 3461 4: hexchar uses upper case only. */
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool smtp_xtext_valid(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			if (i + 2 >= len)
				return false;
			if (hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
				return false;
			i += 2;
			continue;
		}
		if (c < 33 || c > 126 || c == '=')
			return false;
	}
	return true;
}

/* Splits "KEY[=VALUE]" tokens separated by single or multiple spaces. */
struct param_iter {
	const char *s;
	size_t len, pos;
};

static bool param_next(struct param_iter *it, const char **key, size_t *klen, const char **val, size_t *vlen,
		       bool *has_val)
{
	while (it->pos < it->len && it->s[it->pos] == ' ')
		it->pos++;
	if (it->pos >= it->len)
		return false;
	size_t st = it->pos;
	while (it->pos < it->len && it->s[it->pos] != ' ')
		it->pos++;
	const char *t = it->s + st;
	size_t tl = it->pos - st;
	const char *eq = memchr(t, '=', tl);
	*key = t;
	if (eq) {
		*klen = (size_t)(eq - t);
		*val = eq + 1;
		*vlen = tl - *klen - 1;
		*has_val = true;
	} else {
		*klen = tl;
		*val = NULL;
		*vlen = 0;
		*has_val = false;
	}
	return true;
}

static bool esmtp_keyword_valid(const char *k, size_t n)
{
	if (n == 0 || !is_letdig((unsigned char)k[0]))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!is_letdig((unsigned char)k[i]) && k[i] != '-')
			return false;
	return true;
}

int smtp_parse_mail_params(const char *s, size_t len, bool lmtp, struct smtp_mail_params *mp)
{
	struct param_iter it = {s, len, 0};
	const char *k, *v;
	size_t kl, vl;
	bool hv, seen_body = false;

	memset(mp, 0, sizeof(*mp));
	while (param_next(&it, &k, &kl, &v, &vl, &hv)) {
		if (!esmtp_keyword_valid(k, kl))
			return -EINVAL;
		if (ds_ascii_ieq(k, kl, "size")) {
			if (mp->has_size)
				return -EPROTO;
			if (!hv)
				return -EINVAL;
			/* 20 digits fit in u64 only partly: parse_u64 checks overflow. */
			int r = smtp_parse_u64(v, vl, INT64_MAX, &mp->size);
			if (r)
				return r;
			mp->has_size = true;
		} else if (ds_ascii_ieq(k, kl, "body")) {
			if (seen_body)
				return -EPROTO;
			seen_body = true;
			if (!hv)
				return -EINVAL;
			if (ds_ascii_ieq(v, vl, "7bit"))
				mp->body = SMTP_BODY_7BIT;
			else if (ds_ascii_ieq(v, vl, "8bitmime"))
				mp->body = SMTP_BODY_8BITMIME;
			else if (ds_ascii_ieq(v, vl, "binarymime"))
				mp->body = SMTP_BODY_BINARYMIME;
			else
				return -EINVAL;
		} else if (ds_ascii_ieq(k, kl, "smtputf8")) {
			if (mp->smtputf8)
				return -EPROTO;
			if (hv)
				return -EINVAL;
			mp->smtputf8 = true;
		} else if (ds_ascii_ieq(k, kl, "prdr") && !lmtp) {
			if (mp->prdr)
				return -EPROTO;
			if (hv)
				return -EINVAL;
			mp->prdr = true;
		} else if (ds_ascii_ieq(k, kl, "ret")) {
			if (mp->has_ret)
				return -EPROTO;
			if (!hv || !(ds_ascii_ieq(v, vl, "full") || ds_ascii_ieq(v, vl, "hdrs")))
				return -EINVAL;
			mp->has_ret = true;
		} else if (ds_ascii_ieq(k, kl, "envid")) {
			if (mp->has_envid)
				return -EPROTO;
			if (!hv || vl == 0 || vl > SMTP_ENVID_MAX || !smtp_xtext_valid(v, vl))
				return -EINVAL;
			mp->has_envid = true;
		} else {
			return -ENOTSUP;
		}
	}
	return 0;
}

static bool notify_valid(const char *v, size_t vl)
{
	if (ds_ascii_ieq(v, vl, "never"))
		return true;
	unsigned seen = 0;
	size_t i = 0;
	while (i <= vl) {
		size_t st = i;
		while (i < vl && v[i] != ',')
			i++;
		unsigned bit;
		if (ds_ascii_ieq(v + st, i - st, "success"))
			bit = 1;
		else if (ds_ascii_ieq(v + st, i - st, "failure"))
			bit = 2;
		else if (ds_ascii_ieq(v + st, i - st, "delay"))
			bit = 4;
		else
			return false;
		if (seen & bit)
			return false;
		seen |= bit;
		i++;
	}
	return seen != 0;
}

static bool orcpt_valid(const char *v, size_t vl, bool allow_utf8)
{
	if (vl == 0 || vl > SMTP_ORCPT_MAX)
		return false;
	const char *semi = memchr(v, ';', vl);
	if (!semi || semi == v)
		return false;
	size_t tl = (size_t)(semi - v);
	if (!esmtp_keyword_valid(v, tl))
		return false;
	const char *x = semi + 1;
	size_t xl = vl - tl - 1;
	if (xl == 0)
		return false;
	if (ds_ascii_ieq(v, tl, "utf-8")) {
		/* RFC 6533 utf-8-addr-xtext: printable ASCII minus '+' '=', \x{HEX}, or UTF-8. */
		if (!allow_utf8 && !smtp_xtext_valid(x, xl))
			return false;
		for (size_t i = 0; i < xl; i++) {
			unsigned char c = (unsigned char)x[i];
			if (c < 33 || c == 127 || c == '=')
				return false;
		}
		return smtp_utf8_valid(x, xl);
	}
	return smtp_xtext_valid(x, xl);
}

int smtp_parse_rcpt_params(const char *s, size_t len, bool allow_utf8)
{
	struct param_iter it = {s, len, 0};
	const char *k, *v;
	size_t kl, vl;
	bool hv, notify = false, orcpt = false;

	while (param_next(&it, &k, &kl, &v, &vl, &hv)) {
		if (!esmtp_keyword_valid(k, kl))
			return -EINVAL;
		if (ds_ascii_ieq(k, kl, "notify")) {
			if (notify)
				return -EPROTO;
			if (!hv || !notify_valid(v, vl))
				return -EINVAL;
			notify = true;
		} else if (ds_ascii_ieq(k, kl, "orcpt")) {
			if (orcpt)
				return -EPROTO;
			if (!hv || !orcpt_valid(v, vl, allow_utf8))
				return -EINVAL;
			orcpt = true;
		} else {
			return -ENOTSUP;
		}
	}
	return 0;
}

bool smtp_domain_accepted(const struct smtp_config *cfg, const char *domain, size_t len)
{
	if (len == 0 || domain[0] == '[')
		return false;
	for (uint32_t i = 0; i < cfg->accept_domain_count; i++) {
		const char *a = cfg->accept_domains[i];
		size_t al = strlen(a);
		if (al == 0)
			continue;
		if (a[0] == '.') {
			/* ".example.com": any subdomain, not example.com itself. */
			if (len > al) {
				bool match = true;
				for (size_t k = 0; k < al; k++)
					if (ds_ascii_lower(domain[len - al + k]) != ds_ascii_lower(a[k]))
						match = false;
				if (match)
					return true;
			}
		} else if (len == al) {
			bool match = true;
			for (size_t k = 0; k < al; k++)
				if (ds_ascii_lower(domain[k]) != ds_ascii_lower(a[k]))
					match = false;
			if (match)
				return true;
		}
	}
	return false;
}

bool smtp_helo_valid(const char *s, size_t len)
{
	/* Liberal (clients send all sorts), but printable ASCII, one word, bounded. */
	if (len == 0 || len > SMTP_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 32 || c >= 127)
			return false;
	}
	return true;
}
