/* netport.c - a NIC proxy port: an AF_PACKET socket on one interface.
 * Plain AF_PACKET with virtio-net headers rather than TPACKET rings or a
 * tap: the headers let GSO super-frames (64 KiB of TCP in one frame) and
 * partial checksums through untouched, which rings (TPACKET_V3 rx takes
 * no vnet header before kernel 6.x) would make us split and checksum in
 * software; and recv/send per 64 KiB frame costs little.  The socket's
 * receive buffer is the ring: its overflow is counted by the kernel
 * (PACKET_STATISTICS) and read into drop_ring.  AF_PACKET never pushes
 * back on the sender: a full buffer drops. */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <sys/socket.h>

#include "netproxy_internal.h"

#define NP_RCVBUF (32 << 20)

struct port_job {
    const char *netns_path;
    const char *ifname;
    int fd;
    int rc;
    char err[160];
};

static int port_setup(int fd, const char *ifname, struct port_job *j)
{
    int one = 1, buf = NP_RCVBUF;
    unsigned idx = if_nametoindex(ifname);
    struct sockaddr_ll sll;
    struct packet_mreq mr;
    if (idx == 0) {
        snprintf(j->err, sizeof(j->err), "no network interface %s", ifname);
        return COLO_E_NOT_FOUND;
    }
    if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) != 0 ||
        (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof(buf)) != 0 &&
         setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf)) != 0)) {
        snprintf(j->err, sizeof(j->err), "%s: socket options: %s", ifname, strerror(errno));
        return COLO_E_IO;
    }
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = (int)idx;
    memset(&mr, 0, sizeof(mr));
    mr.mr_ifindex = (int)idx;
    mr.mr_type = PACKET_MR_PROMISC;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) != 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr)) != 0) {
        snprintf(j->err, sizeof(j->err), "%s: bind: %s", ifname, strerror(errno));
        return COLO_E_IO;
    }
    return COLO_OK;
}

static void *port_open_job(void *arg)
{
    struct port_job *j = arg;
    int fd;
    if (j->netns_path != NULL) {   /* this thread alone enters the namespace */
        int ns = open(j->netns_path, O_RDONLY | O_CLOEXEC);
        if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) {
            snprintf(j->err, sizeof(j->err), "network namespace %s: %s", j->netns_path,
                     strerror(errno));
            j->rc = errno == ENOENT ? COLO_E_NOT_FOUND : COLO_E_PERMISSION;
            if (ns >= 0)
                close(ns);
            return NULL;
        }
        close(ns);
    }
    /* protocol 0: nothing is received until bind names the interface */
    if ((fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(j->err, sizeof(j->err), "AF_PACKET socket: %s", strerror(errno));
        j->rc = errno == EPERM ? COLO_E_PERMISSION : COLO_E_IO;
        return NULL;
    }
    if ((j->rc = port_setup(fd, j->ifname, j)) != COLO_OK) {
        close(fd);
        return NULL;
    }
    j->fd = fd;
    return NULL;
}

int colo_np_port_open(const char *netns_path, const char *ifname, int *fd)
{
    struct port_job j = {.netns_path = netns_path, .ifname = ifname, .fd = -1, .rc = COLO_OK};
    pthread_t t;
    int rc;
    *fd = -1;
    if (ifname == NULL || ifname[0] == '\0' || strlen(ifname) >= IF_NAMESIZE)
        return colo_fail(COLO_E_INVAL, "network interface name must be 1..%d bytes",
                         IF_NAMESIZE - 1);
    if (netns_path == NULL) {
        port_open_job(&j);
    } else {
        if ((rc = pthread_create(&t, NULL, port_open_job, &j)) != 0)
            return colo_fail_errno(COLO_E_NOMEM, rc, "port thread");
        pthread_join(t, NULL);
    }
    if (j.rc != COLO_OK)
        return colo_fail(j.rc, "%s", j.err);
    *fd = j.fd;
    return COLO_OK;
}

uint64_t np_port_drops(int fd)
{
    struct tpacket_stats ts;
    socklen_t len = sizeof(ts);
    if (fd < 0 || getsockopt(fd, SOL_PACKET, PACKET_STATISTICS, &ts, &len) != 0)
        return 0;
    return ts.tp_drops;   /* since the last read: the kernel resets them */
}
