/*
 * NOTE TO THE XEN HELPER: the lead engineer accidentally overwrote your
 * native/xen.c at 02:44:11 UTC with this temporary stub (sorry!). Your last
 * compiled object from 02:44:02 is /tmp/xen.o (symbols colo_xen_open,
 * colo_xen_built), but the source is gone: please write xen.c again in full.
 * The lead will not touch this file again.
 */
#include "internal.h"

int colo_xen_built(void) { return 0; }

int colo_xen_open(const char *name, colo_domain **out)
{
    COLO_UNUSED(name);
    COLO_UNUSED(out);
    return colo_fail(COLO_E_NOT_BUILT, "backend xen: not built: stub");
}
