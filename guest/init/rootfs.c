/* The guest side of a VM: boot mounts, finding the agent port, assembling the root, and
 * the identity START brings (clock, entropy, hostname). None of it runs in test mode. */
#include "init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NEWROOT "/mnt/root"

/* from <linux/random.h>; musl-gcc ships no kernel headers */
#ifndef RNDADDENTROPY
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#endif
#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

static int do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
		    const char *data, char *err, size_t errlen)
{
	if (mkdir(dst, 0755) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", dst, strerror(errno));
		return -1;
	}
	if (mount(src, dst, type, flags, data) < 0) {
		snprintf(err, errlen, "mount %s (%s) on %s: %s", src, type ? type : "bind", dst, strerror(errno));
		return -1;
	}
	return 0;
}

/* mount(8)-style flag words become MS_* bits (set, or cleared by their opposite); valued
 * options (size=, mode=...) stay as data for the filesystem. Unknown words are refused
 * rather than handed to the kernel as data, where they would mean something else. */
static const struct { const char *word; unsigned long set, clear; } mount_words[] = {
	{ "ro", MS_RDONLY, 0 },		{ "rw", 0, MS_RDONLY },
	{ "nosuid", MS_NOSUID, 0 },	{ "suid", 0, MS_NOSUID },
	{ "nodev", MS_NODEV, 0 },	{ "dev", 0, MS_NODEV },
	{ "noexec", MS_NOEXEC, 0 },	{ "exec", 0, MS_NOEXEC },
	{ "sync", MS_SYNCHRONOUS, 0 },	{ "async", 0, MS_SYNCHRONOUS },
	{ "dirsync", MS_DIRSYNC, 0 },
	{ "noatime", MS_NOATIME, MS_RELATIME | MS_STRICTATIME },
	{ "atime", 0, MS_NOATIME },
	{ "relatime", MS_RELATIME, MS_NOATIME | MS_STRICTATIME },
	{ "strictatime", MS_STRICTATIME, MS_NOATIME | MS_RELATIME },
	{ "nodiratime", MS_NODIRATIME, 0 }, { "diratime", 0, MS_NODIRATIME },
};

int mount_options(const char *opts, unsigned long *flags, char *data, size_t len)
{
	size_t used = 0;
	data[0] = 0;
	for (const char *p = opts; *p;) {
		size_t n = strcspn(p, ",");
		if (n && memchr(p, '=', n)) {
			if (used + n + 2 > len)
				return -1;
			if (used)
				data[used++] = ',';
			memcpy(data + used, p, n);
			data[used += n] = 0;
		} else if (n) {
			size_t i = 0;
			for (; i < sizeof mount_words / sizeof mount_words[0]; i++)
				if (strlen(mount_words[i].word) == n && !strncmp(mount_words[i].word, p, n))
					break;
			if (i == sizeof mount_words / sizeof mount_words[0])
				return -1;
			*flags = (*flags & ~mount_words[i].clear) | mount_words[i].set;
		}
		p += n;
		if (*p == ',')
			p++;
	}
	return 0;
}

/* mkdir -p for a path under the new root (the overlay is writable) */
static int mkdir_p(char *path)
{
	for (char *q = path + 1; *q; q++) {
		if (*q != '/')
			continue;
		*q = 0;
		if (mkdir(path, 0755) < 0 && errno != EEXIST) {
			*q = '/';
			return -1;
		}
		*q = '/';
	}
	return mkdir(path, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

/* a small host file (hosts, hostname, resolv.conf) placed in the new root; a read-only one
 * is bind-mounted onto itself read-only so the workload cannot change it */
static int place_file(const struct file_spec *f, char *err, size_t errlen)
{
	char path[BB_MAX_STR + 16];
	snprintf(path, sizeof path, NEWROOT "%s", f->path);
	char *slash = strrchr(path, '/');
	*slash = 0;
	int rc = mkdir_p(path);
	*slash = '/';
	/* O_NOFOLLOW: a symlink planted by the image must not redirect the write */
	int fd = rc < 0 ? -1 : open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, f->data, f->len) != (ssize_t)f->len) {
		snprintf(err, errlen, "write %s: %s", f->path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	if ((f->flags & 1) && (mount(path, path, NULL, MS_BIND, NULL) < 0 ||
			       mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)) {
		snprintf(err, errlen, "read-only %s: %s", f->path, strerror(errno));
		return -1;
	}
	return 0;
}

int boot_mounts(void)
{
	char err[256];
	const unsigned long nse = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	int rc = 0;
	rc |= do_mount("proc", "/proc", "proc", nse, NULL, err, sizeof err);
	rc |= do_mount("sysfs", "/sys", "sysfs", nse, NULL, err, sizeof err);
	rc |= do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", err, sizeof err);
	/* the kernel opened no console for us if the initramfs lacked /dev/console */
	if (fcntl(2, F_GETFD) < 0) {
		int fd = open("/dev/console", O_RDWR | O_NOCTTY);
		if (fd >= 0) {
			dup2(fd, 0); dup2(fd, 1); dup2(fd, 2);
			if (fd > 2)
				close(fd);
		}
	}
	rc |= do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666", err, sizeof err);
	rc |= do_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", err, sizeof err);
	rc |= do_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", err, sizeof err);
	if (rc)
		logmsg("boot mounts: %s", err);
	return rc;
}

/* The first line of a small (sysfs) file into buf, without its newline; -1 if unreadable or empty. */
static int read_line(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return 0;
}

int open_channel(const char *name, int timeout_ms)
{
	/* the port appears when virtio-serial has probed; poll for it briefly */
	for (int waited = 0; waited <= timeout_ms; waited += 5) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (e->d_name[0] == '.')
				continue;
			char path[512], buf[128];
			snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
			if (read_line(path, buf, sizeof buf) < 0 || strcmp(buf, name))
				continue;
			snprintf(path, sizeof path, "/dev/%s", e->d_name);
			int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
			if (fd >= 0) {
				closedir(d);
				return fd;
			}
		}
		if (d)
			closedir(d);
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	return -1;
}

void apply_identity(const struct start_spec *s)
{
	if (s->has_time) {
		struct timespec ts = { .tv_sec = (time_t)s->sec, .tv_nsec = (long)s->nsec };
		if (clock_settime(CLOCK_REALTIME, &ts) < 0)
			logmsg("clock_settime: %s", strerror(errno));
	}
	if (s->entropy_len) {
		struct { int count; int size; unsigned char buf[BB_MAX_ENTROPY]; } info;
		info.count = (int)s->entropy_len * 8;
		info.size = (int)s->entropy_len;
		memcpy(info.buf, s->entropy, s->entropy_len);
		int fd = open("/dev/random", O_WRONLY | O_CLOEXEC);
		if (fd < 0 || ioctl(fd, RNDADDENTROPY, &info) < 0)
			logmsg("RNDADDENTROPY: %s", strerror(errno));
		/* Adding entropy does not reseed a crng that is already ready: a guest restored
		 * from a template would go on with the template's crng state (same
		 * /proc/sys/kernel/random/uuid in every clone, measured). Reseed it now. */
		if (fd >= 0 && ioctl(fd, RNDRESEEDCRNG) < 0)
			logmsg("RNDRESEEDCRNG: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	if (s->hostname && sethostname(s->hostname, strlen(s->hostname)) < 0)
		logmsg("sethostname: %s", strerror(errno));
}

/* "serial=NAME" names a virtio-blk disk by the serial QEMU gave it (probe order is not
 * stable across device sets); anything else is a device path */
static const char *resolve_dev(const char *spec, char *buf, size_t len)
{
	if (strncmp(spec, "serial=", 7))
		return spec;
	DIR *d = opendir("/sys/block");
	struct dirent *e;
	const char *found = NULL;
	while (d && !found && (e = readdir(d))) {
		char path[300], serial[128];
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
		if (read_line(path, serial, sizeof serial) < 0)
			continue;
		if (!strcmp(serial, spec + 7)) {
			snprintf(buf, len, "/dev/%s", e->d_name);
			found = buf;
		}
	}
	if (d)
		closedir(d);
	return found ? found : spec;
}

/* MOUNT with flag 2: the share holds one file, "file". It is mounted out of sight under
 * /mnt/files, and that file is bound onto the target: an existing file of the image, or a
 * new empty one (with its directories), as docker makes for a file volume. */
static int mount_file(const struct mount_spec *m, int i, const char *path, unsigned long flags,
		      const char *data, char *err, size_t errlen)
{
	char share[64], file[80], parent[BB_MAX_STR + 16];
	snprintf(share, sizeof share, "/mnt/files/%d", i);
	snprintf(file, sizeof file, "%s/file", share);
	if (mkdir_p(share) < 0) {
		snprintf(err, errlen, "mkdir %s: %s", share, strerror(errno));
		return -1;
	}
	if (do_mount(m->source, share, m->fstype, flags, data[0] ? data : NULL, err, errlen))
		return -1;
	snprintf(parent, sizeof parent, "%s", path);
	*strrchr(parent, '/') = '\0';
	if (mkdir_p(parent) < 0) {
		snprintf(err, errlen, "mkdir for %s: %s", m->target, strerror(errno));
		return -1;
	}
	int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		snprintf(err, errlen, "file volume at %s: %s", m->target, strerror(errno));
		return -1;
	}
	close(fd);
	unsigned long kept = flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
	if (do_mount(file, path, NULL, MS_BIND, NULL, err, errlen))
		return -1;
	if (mount(NULL, path, NULL, MS_REMOUNT | MS_BIND | kept, NULL) < 0) {
		snprintf(err, errlen, "remount %s: %s", m->target, strerror(errno));
		return -1;
	}
	return 0;
}

/* The root a PREPARE assembled ahead of START, and what it was assembled from. */
static struct { int ready; char lower[BB_MAX_STR + 1], fstype[64]; } prepared;

static const char *lower_type(const struct start_spec *s)
{
	return s->lower_fstype ? s->lower_fstype : "erofs";
}

/* The image read-only, a writable layer (tmpfs, or the UPPER disk), overlayfs over both at
 * NEWROOT, and the kernel filesystems inside it: what every START with this LOWER and UPPER
 * gets before its own MOUNTs and FILEs. */
static int base_root(const struct start_spec *s, char *err, size_t errlen)
{
	char lower[300], upper[300];
	const unsigned long nse = MS_NOSUID | MS_NODEV | MS_NOEXEC;
	mkdir("/mnt", 0755);
	if (do_mount(resolve_dev(s->lower, lower, sizeof lower), "/mnt/lower", lower_type(s), MS_RDONLY, NULL, err, errlen))
		return -1;
	if (s->upper) {
		if (do_mount(resolve_dev(s->upper, upper, sizeof upper), "/mnt/rw", s->upper_fstype ? s->upper_fstype : "ext4", 0, NULL, err, errlen))
			return -1;
	} else if (do_mount("tmpfs", "/mnt/rw", "tmpfs", 0, "mode=0755", err, errlen)) {
		return -1;
	}
	/* a persistent upper disk keeps these from the last run */
	mkdir("/mnt/rw/upper", 0755);
	mkdir("/mnt/rw/work", 0755);
	if (do_mount("overlay", NEWROOT, "overlay", 0,
		     "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work", err, errlen))
		return -1;
	if (do_mount("proc", NEWROOT "/proc", "proc", nse, NULL, err, errlen) ||
	    do_mount("sysfs", NEWROOT "/sys", "sysfs", nse | MS_RDONLY, NULL, err, errlen) ||
	    do_mount("devtmpfs", NEWROOT "/dev", "devtmpfs", MS_NOSUID, "mode=0755", err, errlen) ||
	    /* the same devpts instance as init's, so ptys init opens are visible inside */
	    do_mount("/dev/pts", NEWROOT "/dev/pts", NULL, MS_BIND, NULL, err, errlen) ||
	    do_mount("tmpfs", NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", err, errlen) ||
	    do_mount("tmpfs", NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", err, errlen))
		return -1;
	return 0;
}

/* Undo a prepared root a START cannot use: the whole tree at NEWROOT, then its layers. */
static void drop_prepared(void)
{
	umount2(NEWROOT, MNT_DETACH);
	umount2("/mnt/rw", MNT_DETACH);
	umount2("/mnt/lower", MNT_DETACH);
	prepared.ready = 0;
}

/* Read the image's files into the page cache, depth first in directory order, those that fit
 * what is left of the byte budget, visiting a bounded number of entries. A template does this
 * before its snapshot: its clones then find the pages in RAM they share, instead of each
 * reading them through the emulated disk (the first `true` of a clone took ~10x its second).
 * It reads data and runs nothing of the image. */
struct warm { uint64_t left; int entries; };

static void warm_dir(int dfd, struct warm *w, int depth)
{
	static char buf[65536];
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	struct dirent *e;
	while (depth < 32 && w->entries > 0 && w->left > 0 && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		w->entries--;
		if (e->d_type != DT_DIR && e->d_type != DT_REG)
			continue;
		int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
				(e->d_type == DT_DIR ? O_DIRECTORY : 0));
		if (fd < 0)
			continue;
		if (e->d_type == DT_DIR) {
			warm_dir(fd, w, depth + 1);
			continue;
		}
		struct stat st;
		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= w->left) {
			while (read(fd, buf, sizeof buf) > 0)
				;
			w->left -= (uint64_t)st.st_size;
		}
		close(fd);
	}
	closedir(d);
}

int prepare_root(const struct start_spec *s, char *err, size_t errlen)
{
	if (prepared.ready) {
		snprintf(err, errlen, "the root is already prepared");
		return -1;
	}
	if (strlen(s->lower) >= sizeof prepared.lower || strlen(lower_type(s)) >= sizeof prepared.fstype) {
		snprintf(err, errlen, "LOWER or LOWER_FSTYPE too long");
		return -1;
	}
	if (base_root(s, err, errlen) < 0) {
		drop_prepared();
		return -1;
	}
	if (s->warm) {
		struct warm w = { s->warm, BB_WARM_ENTRIES };
		int fd = open("/mnt/lower", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd >= 0)
			warm_dir(fd, &w, 0);
	}
	snprintf(prepared.lower, sizeof prepared.lower, "%s", s->lower);
	snprintf(prepared.fstype, sizeof prepared.fstype, "%s", lower_type(s));
	prepared.ready = 1;
	return 0;
}

int assemble_root(const struct start_spec *s, const char **root, char *err, size_t errlen)
{
	*root = NULL;
	if (s->root_dir) {
		*root = s->root_dir;
		return 0;
	}
	if (prepared.ready && !(s->lower && !s->upper && !strcmp(s->lower, prepared.lower) &&
				!strcmp(lower_type(s), prepared.fstype)))
		drop_prepared();
	if (!s->lower)
		return 0; /* no image: run in the initramfs itself */
	if (!prepared.ready && base_root(s, err, errlen) < 0)
		return -1;
	for (int i = 0; i < s->nmounts; i++) {
		const struct mount_spec *m = &s->mounts[i];
		char path[BB_MAX_STR + 16];
		snprintf(path, sizeof path, NEWROOT "%s", m->target);
		/* nosuid,nodev unless the options say suid/dev: the spec builder already asks
		 * for docker's defaults, this only keeps an older host's START as safe as before */
		unsigned long flags = MS_NOSUID | MS_NODEV | ((m->flags & 1) ? MS_RDONLY : 0);
		char data[BB_MAX_STR + 1];
		if (mount_options(m->options, &flags, data, sizeof data) < 0) {
			snprintf(err, errlen, "mount %s: bad options %s", m->target, m->options);
			return -1;
		}
		if (m->flags & 2) {
			if (mount_file(m, i, path, flags, data, err, errlen) < 0)
				return -1;
			continue;
		}
		if (mkdir_p(path) < 0) {
			snprintf(err, errlen, "mkdir %s: %s", m->target, strerror(errno));
			return -1;
		}
		if (do_mount(m->source[0] ? m->source : m->fstype, path, m->fstype, flags,
			     data[0] ? data : NULL, err, errlen))
			return -1;
	}
	for (int i = 0; i < s->nfiles; i++)
		if (place_file(&s->files[i], err, errlen) < 0)
			return -1;
	/* per-mount read-only: the overlay stays writable underneath for nothing else */
	if (s->readonly_root && mount(NULL, NEWROOT, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0) {
		snprintf(err, errlen, "read-only root: %s", strerror(errno));
		return -1;
	}
	*root = NEWROOT;
	return 0;
}
