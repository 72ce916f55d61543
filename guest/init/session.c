/* Sessions: session 0 is the workload (START), others are EXECs. Each owns one process and
 * its streams; output is pumped to the host as frames, stdin is buffered and written as the
 * process reads it, so a process that never reads stdin cannot block the agent. */
#include "init.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

struct session {
	int used;
	uint32_t id;
	pid_t pid;
	int in_fd, out_fd, err_fd, tty;
	unsigned char *inbuf;
	size_t inlen;
	int in_eof;
};

static struct session sessions[BB_MAX_SESSIONS];

static struct session *find(uint32_t id)
{
	for (int i = 0; i < BB_MAX_SESSIONS; i++)
		if (sessions[i].used && sessions[i].id == id)
			return &sessions[i];
	return NULL;
}

int session_exists(uint32_t id) { return find(id) != NULL; }

static void close_in(struct session *s)
{
	if (s->in_fd >= 0)
		close(s->in_fd);
	s->in_fd = -1;
	free(s->inbuf);
	s->inbuf = NULL;
	s->inlen = 0;
}

int session_start(uint32_t id, const struct proc_spec *p, const char *root,
		  const struct boot_clock *clk, uint32_t out[4])
{
	struct session *s = NULL;
	for (int i = 0; i < BB_MAX_SESSIONS && !s; i++)
		if (!sessions[i].used)
			s = &sessions[i];
	if (!s) {
		send_error(id, E_SPAWN, "too many sessions");
		send_exit(id, 0, 125);
		return -1;
	}
	struct spawned sp;
	char err[512];
	int kind = spawn_process(p, root, &sp, err, sizeof err);
	if (kind) {
		send_error(id, kind, "%s", err);
		send_exit(id, 0, kind == E_NOT_FOUND ? 127 : kind == E_NOT_EXECUTABLE ? 126 : 125);
		return -1;
	}
	memset(s, 0, sizeof *s);
	s->used = 1;
	s->id = id;
	s->pid = sp.pid;
	s->in_fd = sp.in_fd;
	s->out_fd = sp.out_fd;
	s->err_fd = sp.err_fd;
	s->tty = p->terminal;
	unsigned char buf[4 + 4 * 4];
	size_t len = 4;
	put32(buf, (uint32_t)sp.pid);
	if (clk) {
		long long now = now_us();
		out[0] = (uint32_t)(clk->ready - clk->init);
		out[1] = (uint32_t)(clk->root - clk->start);
		out[2] = (uint32_t)(now - clk->root);
		out[3] = (uint32_t)(now - clk->init);
		for (int i = 0; i < 4; i++)
			put32(buf + 4 + 4 * i, out[i]);
		len += 16;
	}
	send_frame(T_STARTED, id, buf, len);
	return 0;
}

void session_stdin(uint32_t id, const unsigned char *data, size_t len)
{
	struct session *s = find(id);
	if (!s)
		return; /* the process may just have exited: input for it is moot */
	if (len == 0) {
		s->in_eof = 1;
		if (s->inlen == 0 && !s->tty)
			close_in(s);
		return;
	}
	if (s->in_fd < 0 || s->in_eof)
		return;
	if (s->inlen + len > BB_STDIN_CAP) {
		send_error(id, E_BAD_REQUEST, "stdin buffer over %u bytes; input dropped", BB_STDIN_CAP);
		return;
	}
	unsigned char *n = realloc(s->inbuf, s->inlen + len);
	if (!n)
		return;
	memcpy(n + s->inlen, data, len);
	s->inbuf = n;
	s->inlen += len;
}

void session_signal(uint32_t id, uint32_t sig)
{
	struct session *s = find(id);
	if (!s) {
		send_error(id, E_UNKNOWN_SESSION, "no running session %u", id);
		return;
	}
	if (sig < 1 || sig > 64 || kill(s->pid, (int)sig) < 0)
		send_error(id, E_BAD_REQUEST, "cannot send signal %u", sig);
}

void session_resize(uint32_t id, uint16_t rows, uint16_t cols)
{
	struct session *s = find(id);
	if (!s || !s->tty)
		return;
	struct winsize ws = { .ws_row = rows, .ws_col = cols };
	ioctl(s->out_fd, TIOCSWINSZ, &ws);
}

/* read once from a stream; returns 0 on data or EAGAIN, 1 at end of stream */
static int pump(struct session *s, int *fd, int type)
{
	unsigned char buf[BB_DATA_CHUNK];
	ssize_t r = read(*fd, buf, sizeof buf);
	if (r > 0) {
		send_frame(type, s->id, buf, (size_t)r);
		return 0;
	}
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	/* 0 is EOF; EIO is how a pty master says its last slave closed */
	send_frame(type, s->id, NULL, 0);
	if (s->tty && fd == &s->out_fd) {
		/* in_fd is a dup of the master; the pty is gone, so is its input */
		close_in(s);
	}
	close(*fd);
	*fd = -1;
	return 1;
}

static void flush_stdin(struct session *s)
{
	while (s->in_fd >= 0 && s->inlen > 0) {
		ssize_t w = write(s->in_fd, s->inbuf, s->inlen);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				close_in(s); /* EPIPE: the reader is gone, drop its input */
			return;
		}
		memmove(s->inbuf, s->inbuf + w, s->inlen - (size_t)w);
		s->inlen -= (size_t)w;
	}
	if (s->in_fd >= 0 && s->inlen == 0 && s->in_eof && !s->tty)
		close_in(s);
}

int sessions_pollfds(struct pollfd *fds, int max)
{
	int n = 0;
	for (int i = 0; i < BB_MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (!s->used)
			continue;
		if (s->out_fd >= 0 && n < max)
			fds[n++] = (struct pollfd){ .fd = s->out_fd, .events = POLLIN };
		if (s->err_fd >= 0 && n < max)
			fds[n++] = (struct pollfd){ .fd = s->err_fd, .events = POLLIN };
		if (s->in_fd >= 0 && s->inlen > 0 && n < max)
			fds[n++] = (struct pollfd){ .fd = s->in_fd, .events = POLLOUT };
	}
	return n;
}

void sessions_handle(struct pollfd *fds, int n)
{
	for (int k = 0; k < n; k++) {
		if (!fds[k].revents)
			continue;
		for (int i = 0; i < BB_MAX_SESSIONS; i++) {
			struct session *s = &sessions[i];
			if (!s->used)
				continue;
			if (fds[k].fd == s->out_fd && (fds[k].events & POLLIN))
				pump(s, &s->out_fd, T_STDOUT);
			else if (fds[k].fd == s->err_fd && (fds[k].events & POLLIN))
				pump(s, &s->err_fd, T_STDERR);
			else if (fds[k].fd == s->in_fd && (fds[k].events & POLLOUT)) {
				if (fds[k].revents & (POLLERR | POLLHUP))
					close_in(s);
				else
					flush_stdin(s);
			}
		}
	}
}

static void finish(struct session *s, int status)
{
	/* the process is gone, so everything it wrote is already in the pipes: drain them
	 * (until EAGAIN), then end the streams, then report the exit */
	/* a pty hands the slave's output to the master asynchronously (a kernel work item),
	 * so wait a little for it; its end is EIO once the last slave fd is closed */
	int wait_ms = s->tty ? 200 : 0;
	while (s->out_fd >= 0 && pump(s, &s->out_fd, T_STDOUT) == 0) {
		struct pollfd p = { .fd = s->out_fd, .events = POLLIN };
		if (poll(&p, 1, wait_ms) <= 0)
			break;
	}
	while (s->err_fd >= 0 && pump(s, &s->err_fd, T_STDERR) == 0) {
		struct pollfd p = { .fd = s->err_fd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0)
			break;
	}
	if (s->out_fd >= 0) {
		send_frame(T_STDOUT, s->id, NULL, 0);
		close(s->out_fd);
	}
	if (s->err_fd >= 0) {
		send_frame(T_STDERR, s->id, NULL, 0);
		close(s->err_fd);
	} else if (s->tty) {
		send_frame(T_STDERR, s->id, NULL, 0);
	}
	close_in(s);
	if (WIFSIGNALED(status))
		send_exit(s->id, 1, (uint32_t)WTERMSIG(status));
	else
		send_exit(s->id, 0, (uint32_t)WEXITSTATUS(status));
	memset(s, 0, sizeof *s);
}

void sessions_reap(void)
{
	int status;
	pid_t pid;
	/* PID 1 (or a subreaper in test mode) inherits every orphan: reap them all */
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < BB_MAX_SESSIONS; i++)
			if (sessions[i].used && sessions[i].pid == pid)
				finish(&sessions[i], status);
	}
}

void sessions_kill_all(void)
{
	for (int i = 0; i < BB_MAX_SESSIONS; i++)
		if (sessions[i].used) {
			kill(-sessions[i].pid, SIGKILL);
			kill(sessions[i].pid, SIGKILL);
		}
}
