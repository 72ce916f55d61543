/* Which TCP ports the guest listens on beyond loopback, for the host to forward them.
 *
 * Asked for by START's WATCH_PORTS: when the VM sits in a container's network namespace
 * behind user-mode networking, a client's port mapping (podman/docker -p, a Service) ends
 * at that namespace, and QEMU can only forward a port it knows of. Like Lima, the guest
 * tells: every BB_PORTS_EVERY_MS it reads /proc/net/tcp{,6} and sends PORTS when the set
 * of listening ports changed. Cheap: two small reads, no process or socket of its own. */
#include "init.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int watching;
static long long next_scan_ms;
static uint16_t last[BB_MAX_PORTS];
static int nlast;

static long long now_ms(void) { return now_us() / 1000; }

/* /proc/net/tcp prints the address as the bytes of the in-memory (network order) value
 * read as a native word, so 127.0.0.1 is 0100007F on x86; tcp6 prints four such words. */
static int loopback(const char *hex)
{
	size_t len = strlen(hex);
	if (len == 8)
		return !strcmp(hex + 6, "7F");
	if (len != 32)
		return 1; /* not understood: not forwarded */
	if (!strcmp(hex, "00000000000000000000000001000000"))
		return 1; /* ::1 */
	/* ::ffff:127.x.y.z */
	return !strncmp(hex, "0000000000000000FFFF0000", 24) && !strcmp(hex + 30, "7F");
}

static int scan_file(const char *path, uint16_t *out, int n)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return n; /* no IPv6 in this kernel, say */
	char line[512];
	if (fgets(line, sizeof line, f)) { /* the header */
		while (n < BB_MAX_PORTS && fgets(line, sizeof line, f)) {
			char local[40];
			unsigned port, state;
			if (sscanf(line, " %*u: %39[0-9A-F]:%x %*[0-9A-F]:%*x %x", local, &port, &state) != 3)
				continue;
			if (state == 0x0A /* LISTEN */ && port && !loopback(local))
				out[n++] = (uint16_t)port;
		}
	}
	fclose(f);
	return n;
}

static int cmp_port(const void *a, const void *b)
{
	return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/* the sorted, distinct listening ports */
static int scan(uint16_t *ports)
{
	int n = scan_file("/proc/net/tcp", ports, 0);
	n = scan_file("/proc/net/tcp6", ports, n);
	qsort(ports, (size_t)n, sizeof *ports, cmp_port);
	int u = 0;
	for (int i = 0; i < n; i++)
		if (!u || ports[u - 1] != ports[i])
			ports[u++] = ports[i];
	return u;
}

void ports_watch(void)
{
	watching = 1;
	next_scan_ms = 0;
}

int ports_timeout_ms(void)
{
	if (!watching)
		return -1;
	long long left = next_scan_ms - now_ms();
	return left < 0 ? 0 : (int)left;
}

void ports_tick(void)
{
	if (!watching || now_ms() < next_scan_ms)
		return;
	next_scan_ms = now_ms() + BB_PORTS_EVERY_MS;
	uint16_t ports[BB_MAX_PORTS];
	int n = scan(ports);
	if (n == nlast && !memcmp(ports, last, (size_t)n * sizeof *ports))
		return;
	unsigned char payload[2 * BB_MAX_PORTS];
	for (int i = 0; i < n; i++)
		put16(payload + 2 * i, ports[i]);
	if (send_frame(T_PORTS, 0, payload, (size_t)n * 2) == 0) {
		memcpy(last, ports, (size_t)n * sizeof *ports);
		nlast = n;
	}
}
