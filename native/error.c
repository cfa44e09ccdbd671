/* error.c - error codes, their fixed texts, and the thread-local details. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#ifndef COLO_VERSION
#error "COLO_VERSION must be defined by the build (native/build_native.py)"
#endif

static __thread char last_error[512];

static const char *const texts[] = {
    [COLO_OK] = "ok",
    [COLO_E_NOMEM] = "out of memory",
    [COLO_E_INVAL] = "invalid argument",
    [COLO_E_IO] = "socket error",
    [COLO_E_TIMEOUT] = "timed out waiting for the peer",
    [COLO_E_EOF] = "peer closed the stream",
    [COLO_E_TRUNCATED] = "stream truncated inside a record",
    [COLO_E_BAD_MAGIC] = "bad image header marker",
    [COLO_E_BAD_ID] = "image header id is not colo-plane's",
    [COLO_E_BAD_VERSION] = "unsupported stream version",
    [COLO_E_BAD_OPTIONS] = "unsupported stream options",
    [COLO_E_BAD_DOMAIN_HEADER] = "bad domain header",
    [COLO_E_UNKNOWN_RECORD] = "unknown mandatory record type",
    [COLO_E_RECORD_TOO_LONG] = "record too long",
    [COLO_E_BAD_LENGTH] = "record length disagrees with its contents",
    [COLO_E_BAD_PADDING] = "nonzero padding or reserved field",
    [COLO_E_PFN_RANGE] = "pfn past the end of the domain",
    [COLO_E_WRONG_DIRECTION] = "record not allowed in this direction",
    [COLO_E_BAD_CONTROL_ID] = "unknown control id",
    [COLO_E_STALE_GENERATION] = "record from an older generation",
    [COLO_E_PROTOCOL] = "record out of order",
    [COLO_E_NOT_PAUSED] = "domain must be paused",
    [COLO_E_BACKEND] = "hypervisor call failed",
    [COLO_E_NO_HYPERVISOR] = "no hypervisor on this host",
    [COLO_E_NOT_BUILT] = "backend not built",
    [COLO_E_NOT_FOUND] = "no such domain",
    [COLO_E_PERMISSION] = "permission denied",
    [COLO_E_UNSUPPORTED] = "not supported by this backend",
    [COLO_E_SERVICE] = "guest service error",
    [COLO_E_PAUSED] = "the guest is paused",
    [COLO_E_DUPLICATE] = "request already processed",
    [COLO_E_DISARMED] = "armed checkpoint ended without starting",
    [COLO_E_WRONG_GENERATION] = "record of another generation than its stream's",
};

const char *colo_version(void) { return COLO_VERSION; }

const char *colo_strerror(int code)
{
    if (code < 0 || (size_t)code >= sizeof(texts) / sizeof(texts[0]) || texts[code] == NULL)
        return "unknown error";
    return texts[code];
}

const char *colo_last_error(void) { return last_error; }

static void vrecord(const char *fmt, va_list ap)
{
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
}

int colo_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vrecord(fmt, ap);
    va_end(ap);
    return code;
}

int colo_fail_errno(int code, int errno_value, const char *fmt, ...)
{
    va_list ap;
    size_t used;
    va_start(ap, fmt);
    vrecord(fmt, ap);
    va_end(ap);
    used = strlen(last_error);
    snprintf(last_error + used, sizeof(last_error) - used, ": %s", strerror(errno_value));
    return code;
}
