/* bareboat guest init/agent: shared declarations. Protocol: guest/PROTOCOL.md. */
#ifndef BAREBOAT_INIT_H
#define BAREBOAT_INIT_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define AGENT_VERSION "bareboat-init 1"
#define BB_VERSION 1
#define BB_HDR 16
#define BB_MAX_PAYLOAD (1u << 20)
#define BB_DATA_CHUNK 32768
#define BB_MAX_STR 4096
#define BB_MAX_ARGS 4096
#define BB_MAX_GROUPS 64
#define BB_MAX_RLIMITS 32
#define BB_MAX_MOUNTS 64
#define BB_MAX_ENTROPY 512
#define BB_MAX_FILES 64
#define BB_MAX_FILE_SIZE 65536
#define BB_MAX_SESSIONS 64
#define BB_STDIN_CAP (8u << 20)
#define BB_MAX_PORTS 1024
#define BB_PORTS_EVERY_MS 250
#define BB_WARM_ENTRIES 20000 /* PREPARE's WARM visits at most this many directory entries */

enum frame_type {
	T_HELLO = 1, T_START, T_STARTED, T_STDIN, T_STDOUT, T_STDERR, T_RESIZE, T_SIGNAL,
	T_EXIT, T_EXEC, T_ERROR, T_POWEROFF, T_PING, T_PONG,
	T_PORTS = 17, /* 15, 16 are not used */
	T_PREPARE = 18,
};

enum error_kind {
	E_BAD_REQUEST = 1, E_NOT_FOUND, E_NOT_EXECUTABLE, E_SPAWN, E_ROOTFS, E_INTERNAL,
	E_UNKNOWN_SESSION,
};

enum tag {
	TAG_ARG = 1, TAG_ENV, TAG_CWD, TAG_UID, TAG_GID, TAG_GROUP, TAG_UMASK, TAG_RLIMIT,
	TAG_NO_NEW_PRIVS, TAG_TERMINAL, TAG_WINSIZE,
	TAG_HOSTNAME = 32, TAG_TIME, TAG_ENTROPY, TAG_LOWER, TAG_LOWER_FSTYPE, TAG_UPPER,
	TAG_UPPER_FSTYPE, TAG_MOUNT, TAG_ROOT_DIR, TAG_FILE, TAG_READONLY_ROOT, TAG_WATCH_PORTS,
	TAG_WARM,
};

struct rlim_spec { uint32_t resource; uint64_t soft, hard; };
struct mount_spec { uint32_t flags; char *target, *fstype, *source, *options; };
struct file_spec { uint32_t flags; char *path; unsigned char *data; size_t len; };

struct proc_spec {
	char **argv; int argc;   /* NULL-terminated */
	char **envp; int envc;   /* NULL-terminated */
	char *cwd;
	uint32_t uid, gid;
	gid_t groups[BB_MAX_GROUPS]; int ngroups;
	uint32_t umask;
	struct rlim_spec rlimits[BB_MAX_RLIMITS]; int nrlimits;
	int no_new_privs, terminal;
	uint16_t rows, cols;
};

struct start_spec {
	struct proc_spec proc;
	char *hostname;
	int has_time; uint64_t sec; uint32_t nsec;
	unsigned char entropy[BB_MAX_ENTROPY]; size_t entropy_len;
	char *lower, *lower_fstype, *upper, *upper_fstype, *root_dir;
	struct mount_spec mounts[BB_MAX_MOUNTS]; int nmounts;
	struct file_spec files[BB_MAX_FILES]; int nfiles;
	int readonly_root;
	int watch_ports;
	uint64_t warm; /* PREPARE: bytes of the image to read into the page cache */
};

/* main.c */
extern int test_mode;
long long now_us(void);
void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* proto.c: framing over the channel fd */
extern int chan_fd;
int send_frame(int type, uint32_t session, const void *payload, size_t len);
int send_error(uint32_t session, int kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int send_exit(uint32_t session, int signaled, uint32_t value);
int send_hello(void);
/* parse a START (is_start) or EXEC payload; on error returns -1 with a message in err */
int parse_start(const unsigned char *p, size_t n, struct start_spec *s, int is_start,
		char *err, size_t errlen);
void free_start(struct start_spec *s);
/* parse a PREPARE payload (LOWER, LOWER_FSTYPE) into s->lower, s->lower_fstype */
int parse_prepare(const unsigned char *p, size_t n, struct start_spec *s, char *err,
		  size_t errlen);
uint16_t get16(const unsigned char *p);
uint32_t get32(const unsigned char *p);
uint64_t get64(const unsigned char *p);
void put16(unsigned char *p, uint16_t v);
void put32(unsigned char *p, uint32_t v);

/* process.c: spawning one process of a session */
struct spawned { pid_t pid; int in_fd, out_fd, err_fd, tty_fd; };
/* returns 0 and fills out, or an error kind (E_*) with a message in err */
int spawn_process(const struct proc_spec *p, const char *root, struct spawned *out,
		  char *err, size_t errlen);

/* session.c: the table of running sessions and their stream pumping */
struct pollfd;
/* boot clock of the workload (session 0): STARTED then carries, in microseconds, init to
 * ready, START to root assembled, root to exec done, init to exec done (into `out`) */
struct boot_clock { long long init, ready, start, root; };
int session_start(uint32_t id, const struct proc_spec *p, const char *root,
		  const struct boot_clock *clk, uint32_t out[4]);
void session_stdin(uint32_t id, const unsigned char *data, size_t len);
void session_signal(uint32_t id, uint32_t sig);
void session_resize(uint32_t id, uint16_t rows, uint16_t cols);
int session_exists(uint32_t id);
int sessions_pollfds(struct pollfd *fds, int max);
void sessions_handle(struct pollfd *fds, int n);
void sessions_reap(void);
void sessions_kill_all(void);

/* ports.c: report the guest's listening TCP ports (START's WATCH_PORTS) */
void ports_watch(void);
int ports_timeout_ms(void); /* -1: not watching */
void ports_tick(void);

/* rootfs.c: VM boot mounts and root assembly */
int boot_mounts(void);
void net_setup(void);
int mount_options(const char *opts, unsigned long *flags, char *data, size_t len);
int open_channel(const char *name, int timeout_ms);
/* assemble the root for START; returns the root path (or NULL for "no chroot") via *root */
int assemble_root(const struct start_spec *s, const char **root, char *err, size_t errlen);
/* PREPARE: assemble START's root now, for a later START with the same LOWER, LOWER_FSTYPE
 * and no UPPER (a template, before its snapshot) */
int prepare_root(const struct start_spec *s, char *err, size_t errlen);
void apply_identity(const struct start_spec *s);

#endif
