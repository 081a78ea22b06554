// SPDX-License-Identifier: Apache-2.0
/* LD_PRELOAD shim for trafgen in a network namespace.
 *
 * trafgen enlarges socket buffers by writing /proc/sys/net/core/wmem_*, which is
 * read-only outside the initial network namespace. With the default send
 * buffer (212992 bytes, about 256 small frames in flight) a veth whose peer
 * queues frames in its 256-entry ring fills the buffer, sendto(MSG_DONTWAIT)
 * fails with EAGAIN and trafgen exits. This shim gives every AF_PACKET socket a
 * large send buffer (SO_SNDBUFFORCE, CAP_NET_ADMIN), so a full ring drops
 * frames at the veth instead, and trafgen keeps offering more than the
 * director can take. CAROM_SNDBUF overrides the size in bytes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol)
{
	static int (*real_socket)(int, int, int);
	const char *env = getenv("CAROM_SNDBUF");
	int fd, size = env ? atoi(env) : 64 << 20;

	if (!real_socket)
		real_socket = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
	fd = real_socket(domain, type, protocol);
	if (fd >= 0 && domain == AF_PACKET)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size));
	return fd;
}
