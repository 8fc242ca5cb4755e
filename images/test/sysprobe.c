/*
 * sysprobe NR [ARG...]: makes one raw system call and prints what came of
 * it, so the end-to-end tests can see what a container's seccomp filter
 * does to calls that no busybox applet makes (fanotify_init, vsock
 * sockets, ...). Arguments are numbers in C notation (0x.. for hex).
 *
 * Prints "ok <return value>" and exits 0, or "errno <n> <name>" and exits
 * 1; a usage error exits 2. Built static by build-test-images.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int number(const char *s, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(s, &end, 0);
    return errno == 0 && *s != '\0' && *end == '\0';
}

int main(int argc, char **argv)
{
    unsigned long nr, a[6] = {0};
    long r;
    int i;

    if (argc < 2 || argc > 8 || !number(argv[1], &nr)) {
        fprintf(stderr, "usage: sysprobe NR [ARG...] (at most 6 arguments)\n");
        return 2;
    }
    for (i = 2; i < argc; i++) {
        if (!number(argv[i], &a[i - 2])) {
            fprintf(stderr, "sysprobe: %s is not a number\n", argv[i]);
            return 2;
        }
    }
    errno = 0;
    r = syscall((long)nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (r == -1) {
        int e = errno;
        printf("errno %d %s\n", e, strerrorname_np(e) ? strerrorname_np(e) : "?");
        return 1;
    }
    printf("ok %ld\n", r);
    return 0;
}
