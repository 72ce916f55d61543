/* bareboat init/agent: PID 1 of a bareboat microVM, and the agent the host talks to.
 *
 * As PID 1 it mounts the basics, opens the virtio-serial port `bareboat.agent`, says HELLO
 * and serves the protocol in guest/PROTOCOL.md. `init --test-fd N` runs the same agent as an
 * ordinary process on an inherited stream fd, without mounts, identity or power-off, so the
 * host's tests can drive the real binary without a VM. */
#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

int test_mode;
static int started;
static const char *workload_root;
static char root_buf[BB_MAX_STR + 1];
static unsigned char rbuf[BB_HDR + BB_MAX_PAYLOAD];
static size_t rlen;
/* boot timings, logged once the workload runs: the serial console is slow under TCG */
static long long t_init, t_ready;

void logmsg(const char *fmt, ...)
{
	char buf[1200];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof buf - 2)
		n = (int)sizeof buf - 2;
	buf[n++] = '\n';
	/* the serial console is the log in a VM; stderr in test mode */
	if (write(2, "bareboat-init: ", 15) < 0 || write(2, buf, (size_t)n) < 0) { /* no log */ }
}

long long now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void poweroff(void)
{
	sessions_kill_all();
	if (test_mode)
		exit(0);
	kill(-1, SIGKILL);
	sync();
	reboot(RB_POWER_OFF);
	/* reboot only returns on failure; PID 1 must not exit (that panics the kernel) */
	for (;;)
		pause();
}

static void handle_start(uint32_t session, const unsigned char *p, size_t n)
{
	struct start_spec s;
	char err[512];
	if (session != 0) {
		send_error(session, E_BAD_REQUEST, "START must use session 0");
		return;
	}
	if (started) {
		send_error(0, E_BAD_REQUEST, "already started");
		return;
	}
	if (parse_start(p, n, &s, 1, err, sizeof err) < 0) {
		send_error(0, E_BAD_REQUEST, "START: %s", err);
		send_exit(0, 0, 125);
		return;
	}
	started = 1;
	long long t0 = now_us();
	if (!test_mode)
		apply_identity(&s);
	const char *root = NULL;
	if (s.root_dir || !test_mode) {
		if (assemble_root(&s, &root, err, sizeof err) < 0) {
			send_error(0, E_ROOTFS, "%s", err);
			send_exit(0, 0, 125);
			free_start(&s);
			return;
		}
	}
	if (root) {
		snprintf(root_buf, sizeof root_buf, "%s", root);
		workload_root = root_buf;
	}
	long long t1 = now_us();
	/* the spawn returns once the workload's execve succeeded (its error pipe closed) */
	uint32_t timings[4] = { 0 };
	struct boot_clock clk = { .init = t_init, .ready = t_ready, .start = t0, .root = t1 };
	if (session_start(0, &s.proc, workload_root, &clk, timings) == 0 && !test_mode)
		logmsg("init to ready %u us; START: root %u us, spawn %u us; init to exec %u us",
		       timings[0], timings[1], timings[2], timings[3]);
	if (s.watch_ports)
		ports_watch(); /* after STARTED: the host reads PORTS only from a running workload */
	free_start(&s);
}

/* PREPARE: a template's root, assembled before its snapshot so that no clone spends its own
 * time on it. Answered on its session like an EXEC: EXIT 0, or ERROR then EXIT 125. */
static void handle_prepare(uint32_t session, const unsigned char *p, size_t n)
{
	struct start_spec s;
	char err[512];
	if (session == 0 || session_exists(session)) {
		send_error(session, E_BAD_REQUEST, "PREPARE needs a new session id >= 1");
		return;
	}
	if (started) {
		send_error(session, E_BAD_REQUEST, "PREPARE after START");
		send_exit(session, 0, 125);
		return;
	}
	if (parse_prepare(p, n, &s, err, sizeof err) < 0) {
		send_error(session, E_BAD_REQUEST, "PREPARE: %s", err);
		send_exit(session, 0, 125);
		return;
	}
	int rc = test_mode ? -1 : prepare_root(&s, err, sizeof err);
	if (test_mode)
		snprintf(err, sizeof err, "no root to prepare in test mode");
	free_start(&s);
	if (rc < 0) {
		send_error(session, E_ROOTFS, "%s", err);
		send_exit(session, 0, 125);
		return;
	}
	send_exit(session, 0, 0);
}

static void handle_exec(uint32_t session, const unsigned char *p, size_t n)
{
	struct start_spec s;
	char err[512];
	if (session == 0 || session_exists(session)) {
		send_error(session, E_BAD_REQUEST, "EXEC needs a new session id >= 1");
		return;
	}
	if (!started) {
		send_error(session, E_BAD_REQUEST, "EXEC before START");
		send_exit(session, 0, 125);
		return;
	}
	if (parse_start(p, n, &s, 0, err, sizeof err) < 0) {
		send_error(session, E_BAD_REQUEST, "EXEC: %s", err);
		send_exit(session, 0, 125);
		return;
	}
	session_start(session, &s.proc, workload_root, NULL, NULL);
	free_start(&s);
}

static void dispatch(int type, uint32_t session, const unsigned char *p, size_t n)
{
	switch (type) {
	case T_HELLO: send_hello(); break;
	case T_START: handle_start(session, p, n); break;
	case T_EXEC: handle_exec(session, p, n); break;
	case T_PREPARE: handle_prepare(session, p, n); break;
	case T_STDIN:
		if (n > 65536)
			send_error(session, E_BAD_REQUEST, "STDIN frame over 64 KiB");
		else
			session_stdin(session, p, n);
		break;
	case T_SIGNAL:
		if (n != 4)
			send_error(session, E_BAD_REQUEST, "SIGNAL: bad length");
		else
			session_signal(session, get32(p));
		break;
	case T_RESIZE:
		if (n != 4)
			send_error(session, E_BAD_REQUEST, "RESIZE: bad length");
		else
			session_resize(session, get16(p), get16(p + 2));
		break;
	case T_PING:
		if (n > 64)
			send_error(session, E_BAD_REQUEST, "PING over 64 bytes");
		else
			send_frame(T_PONG, session, p, n);
		break;
	case T_POWEROFF: poweroff(); break;
	default: send_error(session, E_BAD_REQUEST, "unexpected frame type %d", type); break;
	}
}

/* parse every whole frame in rbuf; a broken header resynchronises by dropping the buffer */
static void process_input(void)
{
	size_t off = 0;
	while (rlen - off >= BB_HDR) {
		unsigned char *h = rbuf + off;
		uint32_t len = get32(h + 12);
		if (memcmp(h, "BBAG", 4) || h[4] != BB_VERSION || get16(h + 6) != 0 || len > BB_MAX_PAYLOAD) {
			send_error(0, E_BAD_REQUEST, "bad frame header; input discarded");
			rlen = 0;
			return;
		}
		if (rlen - off < BB_HDR + len)
			break;
		dispatch(h[5], get32(h + 8), h + BB_HDR, len);
		off += BB_HDR + len;
	}
	memmove(rbuf, rbuf + off, rlen - off);
	rlen -= off;
}

static void usage(void)
{
	fprintf(stderr, "usage: init --test-fd FD   (as PID 1 it takes no arguments)\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long long t_start = now_us();
	if (getpid() != 1) {
		if (argc == 2 && !strcmp(argv[1], "--version")) {
			printf("%s, protocol %d\n", AGENT_VERSION, BB_VERSION);
			return 0;
		}
		if (argc != 3 || strcmp(argv[1], "--test-fd"))
			usage();
		char *end;
		long fd = strtol(argv[2], &end, 10);
		if (*end || fd < 0 || fd > 1 << 20)
			usage();
		test_mode = 1;
		chan_fd = (int)fd;
		/* inherited without close-on-exec: the workload must not get the channel */
		if (fcntl(chan_fd, F_SETFD, FD_CLOEXEC) < 0)
			usage();
		/* become the reaper of orphans, as PID 1 is in a VM */
		prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	}
	/* arguments of PID 1 are the kernel's leftovers (virtio_mmio.device=...): ignored */

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	signal(SIGPIPE, SIG_IGN);
	if (!test_mode) {
		/* ctrl-alt-del and friends go to PID 1; the host decides when we stop */
		signal(SIGTERM, SIG_IGN);
		signal(SIGINT, SIG_IGN);
		signal(SIGHUP, SIG_IGN);
		boot_mounts();
		/* before HELLO: a template snapshot then carries configured interfaces */
		net_setup();
		chan_fd = open_channel("bareboat.agent", 10000);
		if (chan_fd < 0) {
			logmsg("no virtio-serial port named bareboat.agent; powering off");
			poweroff();
		}
	}
	t_init = t_start;
	t_ready = now_us();
	send_hello();

	int hup_backoff = 0;
	for (;;) {
		struct pollfd fds[2 + 3 * BB_MAX_SESSIONS];
		int n = 0;
		fds[n++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		int chan_idx = -1;
		if (!hup_backoff) {
			chan_idx = n;
			fds[n++] = (struct pollfd){ .fd = chan_fd, .events = POLLIN };
		}
		int first = n;
		n += sessions_pollfds(fds + n, (int)(sizeof fds / sizeof fds[0]) - n);
		int r = poll(fds, (nfds_t)n, hup_backoff ? 10 : ports_timeout_ms());
		hup_backoff = 0;
		ports_tick();
		if (r < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			continue;
		}
		/* streams before exits, so output read now precedes its EXIT */
		sessions_handle(fds + first, n - first);
		if (fds[0].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
				;
			sessions_reap();
		}
		if (chan_idx >= 0 && fds[chan_idx].revents) {
			ssize_t got = 0;
			if (fds[chan_idx].revents & POLLIN) {
				got = read(chan_fd, rbuf + rlen, sizeof rbuf - rlen);
				if (got > 0) {
					rlen += (size_t)got;
					process_input();
					continue;
				}
				if (got < 0 && (errno == EINTR || errno == EAGAIN))
					continue;
			}
			if (test_mode) {
				/* the host is gone: nothing to serve */
				poweroff();
			}
			/* a virtio port without a host connection reports HUP: wait for one */
			hup_backoff = 1;
		}
	}
}
