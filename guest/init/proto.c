/* Framing and payload parsing of the agent protocol (guest/PROTOCOL.md). */
#include "init.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int chan_fd = -1;

uint16_t get16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
uint32_t get32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
uint64_t get64(const unsigned char *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }
void put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static int write_all(int fd, const unsigned char *buf, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, buf, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				/* the host is slow to read: wait instead of spinning */
				struct pollfd pfd = { .fd = fd, .events = POLLOUT };
				poll(&pfd, 1, 100);
				continue;
			}
			return -1;
		}
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

int send_frame(int type, uint32_t session, const void *payload, size_t len)
{
	unsigned char hdr[BB_HDR];
	if (chan_fd < 0 || len > BB_MAX_PAYLOAD)
		return -1;
	memcpy(hdr, "BBAG", 4);
	hdr[4] = BB_VERSION;
	hdr[5] = (unsigned char)type;
	put16(hdr + 6, 0);
	put32(hdr + 8, session);
	put32(hdr + 12, (uint32_t)len);
	/* one buffer, one write: a frame is never interleaved or split by a signal */
	unsigned char stackbuf[BB_HDR + BB_DATA_CHUNK];
	unsigned char *buf = stackbuf;
	if (len > BB_DATA_CHUNK) {
		buf = malloc(BB_HDR + len);
		if (!buf)
			return -1;
	}
	memcpy(buf, hdr, BB_HDR);
	if (len)
		memcpy(buf + BB_HDR, payload, len);
	int rc = write_all(chan_fd, buf, BB_HDR + len);
	if (buf != stackbuf)
		free(buf);
	return rc;
}

int send_error(uint32_t session, int kind, const char *fmt, ...)
{
	unsigned char buf[2 + 1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf((char *)buf + 2, 1024, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if (n > 1023)
		n = 1023;
	put16(buf, (uint16_t)kind);
	logmsg("error (session %u, kind %d): %s", session, kind, (char *)buf + 2);
	return send_frame(T_ERROR, session, buf, 2 + (size_t)n);
}

int send_exit(uint32_t session, int signaled, uint32_t value)
{
	unsigned char buf[5];
	buf[0] = signaled ? 1 : 0;
	put32(buf + 1, value);
	return send_frame(T_EXIT, session, buf, sizeof buf);
}

int send_hello(void)
{
	unsigned char buf[8 + sizeof AGENT_VERSION];
	put32(buf, BB_VERSION);
	put32(buf + 4, 0);
	memcpy(buf + 8, AGENT_VERSION, sizeof AGENT_VERSION - 1);
	return send_frame(T_HELLO, 0, buf, 8 + sizeof AGENT_VERSION - 1);
}

/* a string field: no NUL inside, bounded */
static char *dup_str(const unsigned char *v, uint32_t len, char *err, size_t errlen, const char *what)
{
	if (len > BB_MAX_STR || memchr(v, 0, len)) {
		snprintf(err, errlen, "%s: string too long or contains NUL", what);
		return NULL;
	}
	char *s = malloc(len + 1);
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	memcpy(s, v, len);
	s[len] = 0;
	return s;
}

static int push_str(char ***list, int *count, char *s, char *err, size_t errlen)
{
	if (*count >= BB_MAX_ARGS) {
		free(s);
		snprintf(err, errlen, "too many list entries");
		return -1;
	}
	char **n = realloc(*list, sizeof(char *) * (size_t)(*count + 2));
	if (!n) {
		free(s);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	n[(*count)++] = s;
	n[*count] = NULL;
	*list = n;
	return 0;
}

/* one u16-length-prefixed string inside a MOUNT value */
static char *take_lp(const unsigned char **p, const unsigned char *end, char *err, size_t errlen)
{
	if (end - *p < 2) {
		snprintf(err, errlen, "MOUNT: truncated");
		return NULL;
	}
	uint16_t l = get16(*p);
	*p += 2;
	if (end - *p < l) {
		snprintf(err, errlen, "MOUNT: truncated");
		return NULL;
	}
	char *s = dup_str(*p, l, err, errlen, "MOUNT");
	*p += l;
	return s;
}

#define NEED(cond, msg) do { if (!(cond)) { snprintf(err, errlen, "%s", msg); goto fail; } } while (0)
#define STR(field, name) do { free(field); field = dup_str(v, len, err, errlen, name); if (!field) goto fail; } while (0)

int parse_start(const unsigned char *p, size_t n, struct start_spec *s, int is_start,
		char *err, size_t errlen)
{
	memset(s, 0, sizeof *s);
	struct proc_spec *ps = &s->proc;
	ps->umask = 022;
	const unsigned char *end = p + n;
	while (p < end) {
		NEED(end - p >= 6, "truncated field header");
		uint16_t tag = get16(p);
		uint32_t len = get32(p + 2);
		p += 6;
		NEED((size_t)(end - p) >= len, "field length beyond payload");
		const unsigned char *v = p;
		p += len;
		NEED(is_start || tag < TAG_HOSTNAME, "identity or root field in EXEC");
		switch (tag) {
		case TAG_ARG:
		case TAG_ENV: {
			char *str = dup_str(v, len, err, errlen, tag == TAG_ARG ? "ARG" : "ENV");
			if (!str)
				goto fail;
			if (tag == TAG_ARG ? push_str(&ps->argv, &ps->argc, str, err, errlen)
					   : push_str(&ps->envp, &ps->envc, str, err, errlen))
				goto fail;
			break;
		}
		case TAG_CWD: STR(ps->cwd, "CWD"); break;
		case TAG_UID: NEED(len == 4, "UID: bad length"); ps->uid = get32(v); break;
		case TAG_GID: NEED(len == 4, "GID: bad length"); ps->gid = get32(v); break;
		case TAG_GROUP:
			NEED(len == 4, "GROUP: bad length");
			NEED(ps->ngroups < BB_MAX_GROUPS, "too many GROUPs");
			ps->groups[ps->ngroups++] = get32(v);
			break;
		case TAG_UMASK: NEED(len == 4 && get32(v) <= 0777, "UMASK: bad value"); ps->umask = get32(v); break;
		case TAG_RLIMIT:
			NEED(len == 20, "RLIMIT: bad length");
			NEED(ps->nrlimits < BB_MAX_RLIMITS, "too many RLIMITs");
			ps->rlimits[ps->nrlimits].resource = get32(v);
			ps->rlimits[ps->nrlimits].soft = get64(v + 4);
			ps->rlimits[ps->nrlimits].hard = get64(v + 12);
			ps->nrlimits++;
			break;
		case TAG_NO_NEW_PRIVS: NEED(len == 1, "NO_NEW_PRIVS: bad length"); ps->no_new_privs = v[0] != 0; break;
		case TAG_TERMINAL: NEED(len == 1, "TERMINAL: bad length"); ps->terminal = v[0] != 0; break;
		case TAG_WINSIZE: NEED(len == 4, "WINSIZE: bad length"); ps->rows = get16(v); ps->cols = get16(v + 2); break;
		case TAG_HOSTNAME: NEED(len <= 64, "HOSTNAME: too long"); STR(s->hostname, "HOSTNAME"); break;
		case TAG_TIME:
			NEED(len == 12 && get32(v + 8) < 1000000000u, "TIME: bad value");
			s->has_time = 1; s->sec = get64(v); s->nsec = get32(v + 8);
			break;
		case TAG_ENTROPY:
			NEED(len <= BB_MAX_ENTROPY, "ENTROPY: too long");
			memcpy(s->entropy, v, len); s->entropy_len = len;
			break;
		case TAG_LOWER: STR(s->lower, "LOWER"); break;
		case TAG_LOWER_FSTYPE: STR(s->lower_fstype, "LOWER_FSTYPE"); break;
		case TAG_UPPER: STR(s->upper, "UPPER"); break;
		case TAG_UPPER_FSTYPE: STR(s->upper_fstype, "UPPER_FSTYPE"); break;
		case TAG_ROOT_DIR: STR(s->root_dir, "ROOT_DIR"); break;
		case TAG_MOUNT: {
			NEED(len >= 4, "MOUNT: truncated");
			NEED(s->nmounts < BB_MAX_MOUNTS, "too many MOUNTs");
			struct mount_spec *m = &s->mounts[s->nmounts++];
			const unsigned char *q = v + 4, *qend = v + len;
			m->flags = get32(v);
			if (!(m->target = take_lp(&q, qend, err, errlen)) ||
			    !(m->fstype = take_lp(&q, qend, err, errlen)) ||
			    !(m->source = take_lp(&q, qend, err, errlen)) ||
			    !(m->options = take_lp(&q, qend, err, errlen)))
				goto fail;
			NEED(q == qend, "MOUNT: trailing bytes");
			NEED(m->target[0] == '/' && !strstr(m->target, "/..") && m->fstype[0], "MOUNT: bad target or fstype");
			break;
		}
		case TAG_FILE: {
			NEED(len >= 6, "FILE: truncated");
			NEED(s->nfiles < BB_MAX_FILES, "too many FILEs");
			struct file_spec *f = &s->files[s->nfiles++];
			const unsigned char *q = v + 4, *qend = v + len;
			f->flags = get32(v);
			if (!(f->path = take_lp(&q, qend, err, errlen)))
				goto fail;
			NEED(f->path[0] == '/' && !strstr(f->path, "/..") && f->path[1], "FILE: bad path");
			f->len = (size_t)(qend - q);
			NEED(f->len <= BB_MAX_FILE_SIZE, "FILE: over 64 KiB");
			f->data = malloc(f->len ? f->len : 1);
			NEED(f->data, "out of memory");
			memcpy(f->data, q, f->len);
			break;
		}
		case TAG_READONLY_ROOT: NEED(len == 1, "READONLY_ROOT: bad length"); s->readonly_root = v[0] != 0; break;
		case TAG_WATCH_PORTS: NEED(len == 1, "WATCH_PORTS: bad length"); s->watch_ports = v[0] != 0; break;
		default:
			snprintf(err, errlen, "unknown field tag %u", tag);
			goto fail;
		}
	}
	NEED(ps->argc >= 1 && ps->argv[0][0], "no command (ARG) given");
	if (!ps->envp) {
		ps->envp = calloc(1, sizeof(char *));
		NEED(ps->envp, "out of memory");
	}
	return 0;
fail:
	free_start(s);
	return -1;
}

int parse_prepare(const unsigned char *p, size_t n, struct start_spec *s, char *err,
		  size_t errlen)
{
	memset(s, 0, sizeof *s);
	const unsigned char *end = p + n;
	while (p < end) {
		NEED(end - p >= 6, "truncated field header");
		uint16_t tag = get16(p);
		uint32_t len = get32(p + 2);
		p += 6;
		NEED((size_t)(end - p) >= len, "field length beyond payload");
		const unsigned char *v = p;
		p += len;
		switch (tag) {
		case TAG_LOWER: NEED(!s->lower, "LOWER twice"); STR(s->lower, "LOWER"); break;
		case TAG_LOWER_FSTYPE:
			NEED(!s->lower_fstype, "LOWER_FSTYPE twice");
			STR(s->lower_fstype, "LOWER_FSTYPE");
			break;
		case TAG_WARM: NEED(len == 8, "WARM: bad length"); s->warm = get64(v); break;
		default:
			snprintf(err, errlen, "field tag %u is not one of PREPARE's", tag);
			goto fail;
		}
	}
	NEED(s->lower && s->lower[0], "no LOWER given");
	return 0;
fail:
	free_start(s);
	return -1;
}

static void free_list(char **l)
{
	if (!l)
		return;
	for (char **q = l; *q; q++)
		free(*q);
	free(l);
}

void free_start(struct start_spec *s)
{
	free_list(s->proc.argv);
	free_list(s->proc.envp);
	free(s->proc.cwd);
	free(s->hostname);
	free(s->lower);
	free(s->lower_fstype);
	free(s->upper);
	free(s->upper_fstype);
	free(s->root_dir);
	for (int i = 0; i < s->nmounts; i++) {
		free(s->mounts[i].target);
		free(s->mounts[i].fstype);
		free(s->mounts[i].source);
		free(s->mounts[i].options);
	}
	for (int i = 0; i < s->nfiles; i++) {
		free(s->files[i].path);
		free(s->files[i].data);
	}
	memset(s, 0, sizeof *s);
}
