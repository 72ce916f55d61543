/* Guest networking without IP_PNP or external tools: lo is brought up always (the kernel
 * gives it 127.0.0.1 itself) and, when QEMU gave us a virtio-net device (eth0), it gets
 * slirp's fixed addressing: 10.0.2.15/24 with a default route via 10.0.2.2 (DNS 10.0.2.3
 * arrives as the container's /etc/resolv.conf in START). Done before HELLO, so a template
 * snapshot already carries it and a clone pays nothing. Not in test mode. */
#include "init.h"

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLIRP_ADDR "10.0.2.15"
#define SLIRP_MASK "255.255.255.0"
#define SLIRP_GW "10.0.2.2"

static void set_in(struct sockaddr *sa, const char *addr)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;
	memset(in, 0, sizeof *in);
	in->sin_family = AF_INET;
	inet_pton(AF_INET, addr, &in->sin_addr);
}

static int if_up(int s, const char *name)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		return -1;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static int if_addr(int s, const char *name, const char *addr, const char *mask)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	set_in(&ifr.ifr_addr, addr);
	if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
		return -1;
	set_in(&ifr.ifr_netmask, mask);
	return ioctl(s, SIOCSIFNETMASK, &ifr);
}

static int default_route(int s, const char *dev, const char *gw)
{
	struct rtentry rt;
	memset(&rt, 0, sizeof rt);
	set_in(&rt.rt_dst, "0.0.0.0");
	set_in(&rt.rt_genmask, "0.0.0.0");
	set_in(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)dev;
	/* a snapshot restored twice would not re-run this, but be idempotent anyway */
	return ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST ? -1 : 0;
}

void net_setup(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		logmsg("net: socket: %s", strerror(errno));
		return;
	}
	if (if_up(s, "lo") < 0)
		logmsg("net: lo up: %s", strerror(errno));
	/* only a VM with --network user has a NIC; none means nothing more to do */
	if (access("/sys/class/net/eth0", F_OK) == 0 &&
	    (if_addr(s, "eth0", SLIRP_ADDR, SLIRP_MASK) < 0 || if_up(s, "eth0") < 0 ||
	     default_route(s, "eth0", SLIRP_GW) < 0))
		logmsg("net: eth0: %s", strerror(errno));
	close(s);
}
