/*
 * stream_format.h - the replication stream's wire format (docs/stream.md):
 * the record type numbers, the control ids, and the layout of the image
 * header, the domain header, the record header and each record's body.
 * Kept apart from stream.c, which writes and reads it, as Xen keeps
 * xg_sr_stream_format.h apart from xg_sr_save.c and xg_sr_restore.c.
 *
 * Part of the cffi cdef: build_native.py reads colo.h, then this, and
 * colo_plane/native/abi.py checks its RecordType and ControlId against these
 * numbers at import.  So, as in colo.h: no include guard, no includes
 * (colo.h comes first: COLO_PAGE_SIZE, COLO_MAX_PFNS_PER_RECORD), only
 * integer #defines and enums.  The layout names are the ones stream.c
 * uses (as Xen's IHDR_ and REC_TYPE_ are); everything is little-endian but
 * the image header.
 */

/* ---- image header: 24 bytes, big-endian -------------------------------- */

#define IMAGE_MARKER 0xFFFFFFFFFFFFFFFFULL   /* u64 marker, at 0 */
#define IMAGE_ID 0x434F4C4FU                 /* u32 id, at 8: "COLO" (Xen's is "XENF") */
/* u32 version, at 12: a reader reads its own version only (docs/stream.md).
 * 2: CHECKPOINT is empty, as in Xen; its claims are CHECKPOINT_INFO's.
 * 1: CHECKPOINT carried generation, epoch and last_seq itself. */
#define IMAGE_VERSION 2U
#define IMAGE_OPT_BIG_ENDIAN 0x0001U         /* u16 options, at 16; then 6 reserved bytes */
#define IMAGE_HEADER_BYTES 24

/* ---- domain header: 16 bytes -------------------------------------------- */

/* u32 type (enum colo_domain_type, colo.h), u16 page_shift
 * (COLO_PAGE_SHIFT), u16 reserved, u64 pages. */
#define DOMAIN_HEADER_BYTES 16

/* ---- records ------------------------------------------------------------ */

/* u32 type, u32 body length, the body, zero padding to a multiple of 8. */
#define REC_OPTIONAL 0x80000000U             /* type bit 31: a reader that does not know it skips it */
#define COLO_MAX_RECORD_BYTES 134217728      /* no body is longer (Xen's bound) */

/* Record types.  Xen's numbers where Xen has the record, meaning what
 * they mean in Xen.  Above libxc's numbers, bit 31 clear (mandatory):
 * 0x1000 + n is libxl's record n (CHECKPOINT_STATE is libxl's 5), and
 * 0x2000 + n colo-plane's own record n, which Xen has not at all. */
enum colo_rec_type {
    COLO_REC_END = 0x00,
    COLO_REC_PAGE_DATA = 0x01,
    COLO_REC_HVM_CONTEXT = 0x09,
    COLO_REC_VERIFY = 0x0D,
    COLO_REC_CHECKPOINT = 0x0E,
    COLO_REC_CHECKPOINT_DIRTY_PFN_LIST = 0x0F,
    COLO_REC_CHECKPOINT_STATE = 0x1005,
    COLO_REC_CHECKPOINT_INFO = 0x2000
};

/* CHECKPOINT_STATE's control_id: the COLO sync points (the seed's
 * context control ids). */
enum colo_control_id {
    COLO_CTL_CHECKPOINT_REQUEST = 0,
    COLO_CTL_SECONDARY_SUSPENDED = 1,
    COLO_CTL_SECONDARY_READY = 2,
    COLO_CTL_SECONDARY_RESUMED = 3
};

/* VERIFY without page hashes: u64 epoch, memory_hash, context_hash, pages. */
#define COLO_VERIFY_BYTES 32

/* Record bodies: the fixed sizes and the bound of PAGE_DATA (an enum, as
 * the cdef takes no #define of an expression).  END's body is empty;
 * HVM_CONTEXT's is the context blob (at most COLO_MAX_CONTEXT_BYTES);
 * CHECKPOINT_DIRTY_PFN_LIST's a bare u64 pfn[]. */
enum colo_rec_body {
    /* PAGE_DATA: u32 count (1..COLO_MAX_PFNS_PER_RECORD), u32 reserved,
     * then u64 pfn[count] and count pages in pfn order. */
    PAGE_DATA_HEAD = 8,
    PAGE_DATA_MAX = PAGE_DATA_HEAD + COLO_MAX_PFNS_PER_RECORD * (8 + COLO_PAGE_SIZE),
    /* CHECKPOINT_STATE: u32 control_id, u32 reserved, u64 generation, u64 epoch. */
    CONTROL_BODY = 24,
    /* VERIFY: COLO_VERIFY_BYTES, then u64 page_hash[pages] or nothing. */
    VERIFY_BODY = COLO_VERIFY_BYTES,
    /* CHECKPOINT_INFO: u64 generation, u64 epoch, u64 last_seq; right
     * before the CHECKPOINT it describes (a multiple of 8: no padding). */
    CHECKPOINT_INFO_BODY = 24,
    /* CHECKPOINT: empty, as in Xen. */
    CHECKPOINT_BODY = 0
};
