/* Spawning one process: stdio (pipes or a pty), chroot, credentials, limits, exec.
 * The child reports why it could not exec through a close-on-exec pipe, so the host
 * learns "not found" from "not executable" instead of a bare exit status. */
#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

enum stage { ST_STDIO = 1, ST_ROOT, ST_CWD, ST_RLIMIT, ST_GROUPS, ST_GID, ST_UID, ST_NNP, ST_EXEC };
static const char *stage_names[] = { "", "stdio", "chroot", "cwd", "rlimit", "groups", "gid", "uid", "no_new_privs", "exec" };

struct child_err { int stage; int err; };

static const char *env_get(char *const *envp, const char *name)
{
	size_t n = strlen(name);
	for (; envp && *envp; envp++)
		if (!strncmp(*envp, name, n) && (*envp)[n] == '=')
			return *envp + n + 1;
	return NULL;
}

/* execvp, but with PATH from the workload's environment and no /bin/sh fallback:
 * returns the errno that best explains the failure (EACCES beats ENOENT, as execvp). */
static int exec_lookup(char *const argv[], char *const envp[])
{
	const char *file = argv[0];
	if (strchr(file, '/')) {
		execve(file, argv, envp);
		return errno;
	}
	const char *path = env_get(envp, "PATH");
	if (!path)
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	int seen_eacces = 0;
	size_t flen = strlen(file);
	while (1) {
		const char *colon = strchrnul(path, ':');
		size_t dlen = (size_t)(colon - path);
		char buf[BB_MAX_STR + 2];
		if (dlen + flen + 2 <= sizeof buf) {
			memcpy(buf, path, dlen);
			size_t off = dlen;
			if (dlen == 0)
				buf[off++] = '.';
			buf[off++] = '/';
			memcpy(buf + off, file, flen + 1);
			execve(buf, argv, envp);
			switch (errno) {
			case EACCES: seen_eacces = 1; break;
			case ENOENT: case ENOTDIR: case ENAMETOOLONG: case ELOOP: case ESTALE: break;
			default: return errno;
			}
		}
		if (!*colon)
			break;
		path = colon + 1;
	}
	return seen_eacces ? EACCES : ENOENT;
}

static void fail(int errfd, int stage, int err)
{
	struct child_err ce = { stage, err };
	if (write(errfd, &ce, sizeof ce) < 0) { /* nothing left to tell */ }
	_exit(127);
}

static void child(const struct proc_spec *p, const char *root, int errfd, int in, int out, int errout,
		  const char *slave)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* init ignores these; an ignored disposition would survive exec */
	signal(SIGPIPE, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	setsid();
	if (slave) {
		int fd = open(slave, O_RDWR);
		if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0)
			fail(errfd, ST_STDIO, errno);
		in = out = errout = fd;
	}
	/* dup2 clears close-on-exec on the copies; every other fd of init is close-on-exec */
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(errout, 2) < 0)
		fail(errfd, ST_STDIO, errno);
	if (root && (chroot(root) < 0 || chdir("/") < 0))
		fail(errfd, ST_ROOT, errno);
	if (p->cwd && chdir(p->cwd) < 0)
		fail(errfd, ST_CWD, errno);
	for (int i = 0; i < p->nrlimits; i++) {
		struct rlimit rl = { .rlim_cur = p->rlimits[i].soft, .rlim_max = p->rlimits[i].hard };
		if (setrlimit((int)p->rlimits[i].resource, &rl) < 0)
			fail(errfd, ST_RLIMIT, errno);
	}
	if (setgroups((size_t)p->ngroups, p->groups) < 0)
		fail(errfd, ST_GROUPS, errno);
	if (setgid(p->gid) < 0)
		fail(errfd, ST_GID, errno);
	if (setuid(p->uid) < 0)
		fail(errfd, ST_UID, errno);
	umask((mode_t)p->umask);
	if (p->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		fail(errfd, ST_NNP, errno);
	fail(errfd, ST_EXEC, exec_lookup(p->argv, p->envp));
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

int spawn_process(const struct proc_spec *p, const char *root, struct spawned *out,
		  char *err, size_t errlen)
{
	int errp[2] = { -1, -1 }, inp[2] = { -1, -1 }, outp[2] = { -1, -1 }, errpipe[2] = { -1, -1 };
	int master = -1;
	char slave[64] = "";
	int kind = E_INTERNAL;
	out->pid = -1;
	out->in_fd = out->out_fd = out->err_fd = out->tty_fd = -1;

	if (pipe2(errp, O_CLOEXEC) < 0)
		goto syserr;
	if (p->terminal) {
		master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ||
		    ptsname_r(master, slave, sizeof slave) != 0)
			goto syserr;
		struct winsize ws = { .ws_row = p->rows ? p->rows : 24, .ws_col = p->cols ? p->cols : 80 };
		ioctl(master, TIOCSWINSZ, &ws);
	} else if (pipe2(inp, O_CLOEXEC) < 0 || pipe2(outp, O_CLOEXEC) < 0 || pipe2(errpipe, O_CLOEXEC) < 0) {
		goto syserr;
	}

	pid_t pid = fork();
	if (pid < 0)
		goto syserr;
	if (pid == 0)
		child(p, root, errp[1], inp[0], outp[1], errpipe[1], p->terminal ? slave : NULL);

	close_fd(&errp[1]);
	close_fd(&inp[0]);
	close_fd(&outp[1]);
	close_fd(&errpipe[1]);
	struct child_err ce;
	ssize_t r;
	do
		r = read(errp[0], &ce, sizeof ce);
	while (r < 0 && errno == EINTR);
	close_fd(&errp[0]);
	if (r == (ssize_t)sizeof ce) {
		/* the child failed before exec: reap it here, the session never existed */
		waitpid(pid, NULL, 0);
		if (ce.stage == ST_EXEC && (ce.err == ENOENT || ce.err == ENOTDIR)) {
			kind = E_NOT_FOUND;
			snprintf(err, errlen, "%s: executable file not found", p->argv[0]);
		} else if (ce.stage == ST_EXEC && (ce.err == EACCES || ce.err == ENOEXEC || ce.err == EPERM)) {
			kind = E_NOT_EXECUTABLE;
			snprintf(err, errlen, "%s: cannot execute: %s", p->argv[0], strerror(ce.err));
		} else {
			kind = ce.stage == ST_ROOT ? E_ROOTFS : E_SPAWN;
			snprintf(err, errlen, "%s failed%s%s: %s", stage_names[ce.stage],
				 ce.stage == ST_CWD ? " for " : "", ce.stage == ST_CWD ? p->cwd : "",
				 strerror(ce.err));
		}
		goto cleanup;
	}
	out->pid = pid;
	if (p->terminal) {
		out->tty_fd = master;
		out->out_fd = master;
		out->in_fd = dup(master);
		fcntl(out->in_fd, F_SETFD, FD_CLOEXEC);
	} else {
		out->in_fd = inp[1];
		out->out_fd = outp[0];
		out->err_fd = errpipe[0];
	}
	fcntl(out->in_fd, F_SETFL, O_NONBLOCK);
	fcntl(out->out_fd, F_SETFL, O_NONBLOCK);
	if (out->err_fd >= 0)
		fcntl(out->err_fd, F_SETFL, O_NONBLOCK);
	return 0;

syserr:
	snprintf(err, errlen, "cannot set up the process: %s", strerror(errno));
	kind = E_INTERNAL;
cleanup:
	close_fd(&errp[0]); close_fd(&errp[1]);
	close_fd(&inp[0]); close_fd(&inp[1]);
	close_fd(&outp[0]); close_fd(&outp[1]);
	close_fd(&errpipe[0]); close_fd(&errpipe[1]);
	close_fd(&master);
	return kind;
}
