/* LD_PRELOAD shim: sets TCP_NODELAY on every TCP connection a server accepts.
 *
 * Local test servers leave Nagle's algorithm on; a small response written in pieces then
 * waits for the client's delayed ACK (tens of ms per small GET on loopback) whatever the
 * client does. Real S3 endpoints do not behave like that, so the benchmark turns Nagle off
 * on the server side for every server it starts (Garage here; bench's own s3s-fs server sets
 * it itself).
 *
 *   gcc -O2 -shared -fPIC -o nodelay_shim.so nodelay_shim.c -ldl
 *   LD_PRELOAD=$PWD/nodelay_shim.so garage server
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void set_nodelay(int fd) {
    if (fd < 0) return;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family != AF_INET && ss.ss_family != AF_INET6) return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int accept(int s, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int fd = real(s, addr, len);
    set_nodelay(fd);
    return fd;
}

int accept4(int s, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int fd = real(s, addr, len, flags);
    set_nodelay(fd);
    return fd;
}
