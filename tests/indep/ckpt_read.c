/* ckpt_read: an independent reader of checkpoint images in the layout of the 2011 kernel
 * checkpoint/restart patch ("Core checkpoint/restart support code", include/linux/checkpoint.h).
 *
 * It shares no code and no tables with ckptrace: the structs below are the patch's own, written
 * with <stdint.h> types, and only the patch's record types are understood. Every other record type
 * is skipped by its `len`, which is what a reader of the seed layout does with an extension.
 *
 * The input is read strictly sequentially (a file or standard input; never seeked), like the
 * patch's ckpt_kread() on a pipe.
 *
 *   ckpt_read [-v] [-A at_vector_size] [IMAGE|-]
 *
 * Checks: HEADER (magic, arch_id 2, the kernel constants, zero padding and uflags, a version that
 * is LINUX_VERSION_CODE's bytes and matches the release string), the three 65-byte uts BUFFERs,
 * HEADER_ARCH next; exact lengths of the seed's fixed structs; TASK, comm STRING (16 bytes),
 * THREAD in that order, TASK_OBJS then CPU; OBJREF objrefs new and positive, with a known
 * objtype, FILE_TABLE / FILE right after their OBJREF and MM after an mm OBJREF; every objref
 * used (TASK_OBJS, FILE_DESC, MM.exe_objref, VMA) introduced before by an OBJREF of the right
 * objtype; fdt_nfds FILE_DESCs and map_count VMAs per table and mm; VMAs page aligned, ordered,
 * vm_page_prot agreeing with vm_flags; PAGE records of 16 + n*4096 bytes, page aligned, ascending
 * inside the VMA before them, closed by vaddr ~0 with len 16; TAIL's magic and nothing after it.
 *
 * Output: with -v one line per record, "index offset type len"; then one summary line,
 * "records=N tasks=N vmas=N pages=N files=N objrefs=N". Exit 0 when the image is valid, 1 with a
 * message naming the record index and byte offset on the first violation, 2 on usage errors.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the patch's layout (include/linux/checkpoint.h, include/linux/magic.h) ---------------- */

#define CHECKPOINT_MAGIC_HEAD 0x00feed0cc0a2d200ULL
#define CHECKPOINT_MAGIC_TAIL 0x002d2a0cc0deef00ULL

struct ckpt_hdr {
    uint32_t type;
    uint32_t len;
};

enum {
    CKPT_HDR_HEADER = 1,
    CKPT_HDR_HEADER_ARCH,
    CKPT_HDR_BUFFER,
    CKPT_HDR_STRING,
    CKPT_HDR_OBJREF,

    CKPT_HDR_TASK = 101,
    CKPT_HDR_TASK_OBJS,
    CKPT_HDR_THREAD,
    CKPT_HDR_CPU,

    CKPT_HDR_FILE_TABLE = 301,
    CKPT_HDR_FILE_DESC,
    CKPT_HDR_FILE_NAME,
    CKPT_HDR_FILE,

    CKPT_HDR_MM = 401,
    CKPT_HDR_VMA,
    CKPT_HDR_MM_CONTEXT,
    CKPT_HDR_PAGE,

    CKPT_HDR_TAIL = 9001,
};

struct ckpt_hdr_objref {
    struct ckpt_hdr h;
    uint32_t objtype;
    int32_t objref;
};

enum obj_type {
    CKPT_OBJ_IGNORE = 0,
    CKPT_OBJ_FILE_TABLE,
    CKPT_OBJ_FILE,
    CKPT_OBJ_MM,
    CKPT_OBJ_MAX /* as the seed's restore_obj: objtype >= CKPT_OBJ_MAX is invalid */
};

struct ckpt_const {
    uint16_t task_comm_len;
    uint16_t at_vector_size;
    uint16_t uts_release_len;
    uint16_t uts_version_len;
    uint16_t uts_machine_len;
};

struct ckpt_hdr_header {
    struct ckpt_hdr h;
    uint64_t magic;
    uint16_t arch_id;
    uint16_t major;
    uint16_t minor;
    uint16_t patch;
    struct ckpt_const constants;
    uint64_t time;
    uint64_t uflags;
};

struct ckpt_hdr_tail {
    struct ckpt_hdr h;
    uint64_t magic;
};

struct ckpt_hdr_task {
    struct ckpt_hdr h;
    uint32_t state;
    uint32_t exit_state;
    uint32_t exit_code;
    uint32_t exit_signal;
    uint64_t set_child_tid;
    uint64_t clear_child_tid;
};

struct ckpt_hdr_task_objs {
    struct ckpt_hdr h;
    int32_t files_objref;
    int32_t mm_objref;
};

struct ckpt_hdr_file_table {
    struct ckpt_hdr h;
    int32_t fdt_nfds;
};

struct ckpt_hdr_file_desc {
    struct ckpt_hdr h;
    int32_t fd_objref;
    int32_t fd_descriptor;
    uint32_t fd_close_on_exec;
};

struct ckpt_hdr_file {
    struct ckpt_hdr h;
    uint32_t f_type;
    uint32_t f_mode;
    uint32_t f_flags;
    uint32_t _padding;
    uint64_t f_pos;
    uint64_t f_version;
};

struct ckpt_hdr_mm {
    struct ckpt_hdr h;
    uint32_t map_count;
    int32_t exe_objref;
    uint64_t def_flags;
    uint64_t flags;
    uint64_t start_code, end_code, start_data, end_data;
    uint64_t start_brk, brk, start_stack;
    uint64_t arg_start, arg_end, env_start, env_end;
};

enum vma_type {
    CKPT_VMA_IGNORE = 0,
    CKPT_VMA_VDSO,
    CKPT_VMA_ANON,
    CKPT_VMA_FILE,
    CKPT_VMA_MAX
};

struct ckpt_hdr_vma {
    struct ckpt_hdr h;
    uint32_t vma_type;
    int32_t vma_objref;
    uint64_t vm_start;
    uint64_t vm_end;
    uint64_t vm_page_prot;
    uint64_t vm_flags;
    uint64_t vm_pgoff;
};

struct ckpt_hdr_page {
    struct ckpt_hdr hdr;
    uint64_t vaddr;
};
#define CKPT_VMA_LAST_PAGE (~(uint64_t)0)

/* The seed's constants on x86_64 (the header names CKPT_ARCH_X86_32 = 1; ckptrace's format
 * documents 2 for x86_64). */
#define ARCH_ID_X86_64 2
#define TASK_COMM_LEN 16
#define UTS_LEN 65 /* sizeof(struct new_utsname.release/version/machine) */
#define PAGE_SIZE 4096ULL

_Static_assert(sizeof(struct ckpt_hdr) == 8, "ckpt_hdr");
_Static_assert(sizeof(struct ckpt_const) == 10, "ckpt_const");
_Static_assert(sizeof(struct ckpt_hdr_header) == 56, "ckpt_hdr_header");
_Static_assert(offsetof(struct ckpt_hdr_header, constants) == 24, "ckpt_hdr_header.constants");
_Static_assert(offsetof(struct ckpt_hdr_header, time) == 40, "ckpt_hdr_header.time");
_Static_assert(sizeof(struct ckpt_hdr_tail) == 16, "ckpt_hdr_tail");
_Static_assert(sizeof(struct ckpt_hdr_objref) == 16, "ckpt_hdr_objref");
_Static_assert(sizeof(struct ckpt_hdr_task) == 40, "ckpt_hdr_task");
_Static_assert(sizeof(struct ckpt_hdr_task_objs) == 16, "ckpt_hdr_task_objs");
_Static_assert(sizeof(struct ckpt_hdr_file_table) == 12, "ckpt_hdr_file_table");
_Static_assert(sizeof(struct ckpt_hdr_file_desc) == 20, "ckpt_hdr_file_desc");
_Static_assert(sizeof(struct ckpt_hdr_file) == 40, "ckpt_hdr_file");
_Static_assert(offsetof(struct ckpt_hdr_file, f_pos) == 24, "ckpt_hdr_file.f_pos");
_Static_assert(sizeof(struct ckpt_hdr_mm) == 120, "ckpt_hdr_mm");
_Static_assert(sizeof(struct ckpt_hdr_vma) == 56, "ckpt_hdr_vma");
_Static_assert(sizeof(struct ckpt_hdr_page) == 16, "ckpt_hdr_page");

/* Little-endian host only: the records are copied into the structs as they are. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian host required");

/* ---- input ---------------------------------------------------------------------------------- */

static FILE *in;
static uint64_t offset;      /* bytes consumed so far */
static uint64_t rec_index;   /* index of the record being read */
static uint64_t rec_offset;  /* its offset */
static struct ckpt_hdr cur;  /* its header */
static int have_cur;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    if (have_cur)
        fprintf(stderr, "ckpt_read: record %" PRIu64 " at offset %" PRIu64 " (type %" PRIu32
                        " len %" PRIu32 "): ", rec_index, rec_offset, cur.type, cur.len);
    else
        fprintf(stderr, "ckpt_read: record %" PRIu64 " at offset %" PRIu64 ": ", rec_index, rec_offset);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* Read exactly n bytes (dst may be NULL: discard). Returns how many were read before EOF. */
static size_t read_some(void *dst, uint64_t n) {
    static unsigned char sink[1 << 16];
    uint64_t got = 0;
    while (got < n) {
        uint64_t want = n - got;
        unsigned char *p;
        if (dst) {
            p = (unsigned char *)dst + got;
        } else {
            p = sink;
            if (want > sizeof sink) want = sizeof sink;
        }
        size_t r = fread(p, 1, (size_t)want, in);
        got += r;
        offset += r;
        if (r < want) {
            if (ferror(in)) fail("read error: %s", strerror(errno));
            break;
        }
    }
    return (size_t)got;
}

static void read_exact(void *dst, uint64_t n, const char *what) {
    uint64_t before = offset;
    if (read_some(dst, n) != n)
        fail("truncated %s: wanted %" PRIu64 " bytes, got %" PRIu64, what, n, offset - before);
}

/* ---- objref table ---------------------------------------------------------------------------- */

/* objref -> objtype, an open-addressing hash table (objrefs are arbitrary positive s32) */
struct objslot {
    int32_t ref; /* 0: empty */
    uint32_t type;
};
static struct objslot *objtab;
static size_t objcap, objcount;

static size_t objslot_of(int32_t ref) {
    size_t i = ((uint32_t)ref * 2654435761u) & (objcap - 1);
    while (objtab[i].ref && objtab[i].ref != ref) i = (i + 1) & (objcap - 1);
    return i;
}

static int objtype_of(int32_t ref) {
    if (ref <= 0 || !objcap) return -1;
    size_t i = objslot_of(ref);
    return objtab[i].ref ? (int)objtab[i].type : -1;
}

static void obj_add(int32_t ref, uint32_t type) {
    if (2 * (objcount + 1) > objcap) {
        struct objslot *old = objtab;
        size_t oldcap = objcap;
        objcap = objcap ? 2 * objcap : 64;
        objtab = calloc(objcap, sizeof *objtab);
        if (!objtab) fail("out of memory for objref %" PRId32, ref);
        for (size_t j = 0; j < oldcap; j++)
            if (old[j].ref) objtab[objslot_of(old[j].ref)] = old[j];
        free(old);
    }
    size_t i = objslot_of(ref);
    objtab[i].ref = ref;
    objtab[i].type = type;
    objcount++;
}

static const char *objname(int t) {
    switch (t) {
    case CKPT_OBJ_FILE_TABLE: return "file table";
    case CKPT_OBJ_FILE: return "file";
    case CKPT_OBJ_MM: return "mm";
    case -1: return "undefined";
    default: return "unknown object";
    }
}

static void use_ref(int32_t ref, int want, int also, const char *field) {
    int t = objtype_of(ref);
    if (t < 0) fail("%s %" PRId32 " is used before an OBJREF introduced it", field, ref);
    if (t != want && t != also)
        fail("%s %" PRId32 " is a %s, not a %s%s%s", field, ref, objname(t), objname(want),
             also >= 0 ? " or " : "", also >= 0 ? objname(also) : "");
}

/* ---- the walk -------------------------------------------------------------------------------- */

static void want_len(uint32_t len) {
    if (cur.len != len) fail("len %" PRIu32 ", the seed's struct is %" PRIu32 " bytes", cur.len, len);
}

/* Copy the whole record (header included) into a struct of exactly its size. */
static void read_struct(void *dst, size_t size, const char *what) {
    want_len((uint32_t)size);
    memcpy(dst, &cur, sizeof cur);
    read_exact((char *)dst + sizeof cur, size - sizeof cur, what);
}

static unsigned hdr_version[3];

static int parse_num(const char **p, unsigned long *v) {
    if (**p < '0' || **p > '9') return 0;
    char *end;
    *v = strtoul(*p, &end, 10);
    *p = end;
    return 1;
}

/* HEADER's major/minor/patch are LINUX_VERSION_CODE's bytes; the release BUFFER says the same
 * version ("6.18.44-..."). Today's KERNEL_VERSION() clamps the sublevel to 255. */
static void check_release(const char *rel) {
    unsigned long v[3] = {0, 0, 0};
    const char *p = rel;
    if (!parse_num(&p, &v[0]) || *p++ != '.' || !parse_num(&p, &v[1]))
        return; /* not a kernel release string: nothing to compare */
    if (*p == '.') {
        p++;
        parse_num(&p, &v[2]);
    }
    unsigned long want[3] = {v[0] & 0xff, v[1] & 0xff, v[2] > 255 ? 255 : v[2]};
    for (int i = 0; i < 3; i++)
        if (hdr_version[i] != want[i])
            fail("HEADER version %u.%u.%u does not encode release \"%.*s\" as LINUX_VERSION_CODE (%lu.%lu.%lu)",
                 hdr_version[0], hdr_version[1], hdr_version[2], UTS_LEN, rel, want[0], want[1], want[2]);
}

static void usage(void) {
    fprintf(stderr, "usage: ckpt_read [-v] [-A at_vector_size] [IMAGE|-]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int verbose = 0;
    long want_auxv = -1;
    const char *path = "-";
    int npos = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) {
            verbose = 1;
        } else if (!strcmp(argv[i], "-A")) {
            if (++i >= argc) usage();
            char *end;
            want_auxv = strtol(argv[i], &end, 10);
            if (*end || want_auxv <= 0 || want_auxv > 0xffff) usage();
        } else if (argv[i][0] == '-' && argv[i][1]) {
            usage();
        } else {
            if (npos++) usage();
            path = argv[i];
        }
    }
    if (!strcmp(path, "-")) {
        in = stdin;
    } else if (!(in = fopen(path, "rb"))) {
        fprintf(stderr, "ckpt_read: %s: %s\n", path, strerror(errno));
        return 2;
    }

    uint64_t tasks = 0, vmas = 0, pages = 0, files = 0, objrefs = 0;

    /* Object bodies the seed writes right after an OBJREF. */
    int pending_obj = -1;     /* objtype of an OBJREF whose FILE_TABLE / FILE must come next */
    uint64_t pending_mms = 0; /* OBJREF mm seen, its MM record not yet (the exe's file comes first) */
    int64_t pending_fds = 0;  /* FILE_DESC records still owed to the last FILE_TABLE */
    int in_mm = 0;            /* between MM and the end of its VMAs */
    uint32_t mm_vmas_left = 0;
    uint64_t prev_vma_end = 0;
    int in_vma = 0;           /* between a VMA and its closing PAGE */
    struct ckpt_hdr_vma vma;
    uint64_t page_pos = 0;    /* next page address allowed in the open VMA */
    int want_comm = 0;        /* the record after TASK must be its comm STRING */
    uint32_t want_next = 0;   /* THREAD after comm, CPU after TASK_OBJS */
    uint32_t prev_type = 0;

    for (rec_index = 0;; rec_index++) {
        rec_offset = offset;
        have_cur = 0;
        size_t got = read_some(&cur, sizeof cur);
        if (got == 0) fail("end of input before TAIL");
        if (got < sizeof cur) fail("truncated record header (%zu of %zu bytes)", got, sizeof cur);
        have_cur = 1;
        if (cur.len < sizeof cur) fail("len is smaller than struct ckpt_hdr");
        if (verbose)
            printf("%" PRIu64 " %" PRIu64 " %" PRIu32 " %" PRIu32 "\n", rec_index, rec_offset, cur.type, cur.len);

        /* Order fixed by the seed's checkpoint_write_header(). */
        if (rec_index == 0 && cur.type != CKPT_HDR_HEADER) fail("the image does not start with HEADER");
        if (rec_index >= 1 && rec_index <= 3 && cur.type != CKPT_HDR_BUFFER)
            fail("record %" PRIu64 " must be the uts BUFFER after HEADER", rec_index);
        if (want_comm && cur.type != CKPT_HDR_STRING) fail("TASK is not followed by its comm STRING");
        if (rec_index == 4 && cur.type != CKPT_HDR_HEADER_ARCH)
            fail("the uts BUFFERs are not followed by HEADER_ARCH");
        if (want_next && cur.type != want_next)
            fail("type %" PRIu32 " where the seed's checkpoint_task() writes type %" PRIu32, cur.type, want_next);
        want_next = 0;
        if (pending_obj == CKPT_OBJ_FILE_TABLE && cur.type != CKPT_HDR_FILE_TABLE)
            fail("OBJREF of a file table is not followed by FILE_TABLE");
        if (pending_obj == CKPT_OBJ_FILE && cur.type != CKPT_HDR_FILE)
            fail("OBJREF of a file is not followed by FILE");
        pending_obj = -1;
        if (in_vma && cur.type != CKPT_HDR_PAGE)
            fail("VMA at %#" PRIx64 " has no closing PAGE (vaddr ~0) before this record", vma.vm_start);
        /* Records that cannot belong to an open file table or mm close them. */
        switch (cur.type) {
        case CKPT_HDR_TASK: case CKPT_HDR_TASK_OBJS: case CKPT_HDR_FILE_TABLE: case CKPT_HDR_MM:
        case CKPT_HDR_TAIL: case CKPT_HDR_HEADER:
            if (pending_fds)
                fail("the FILE_TABLE before this record still owes %" PRId64 " FILE_DESC", pending_fds);
            if (in_mm && mm_vmas_left)
                fail("the MM before this record still owes %" PRIu32 " VMA (map_count)", mm_vmas_left);
            in_mm = 0;
            break;
        case CKPT_HDR_VMA:
            if (pending_fds)
                fail("the FILE_TABLE before this record still owes %" PRId64 " FILE_DESC", pending_fds);
            break;
        case CKPT_HDR_FILE_DESC:
            if (in_mm && mm_vmas_left)
                fail("FILE_DESC inside an MM that still owes %" PRIu32 " VMA", mm_vmas_left);
            in_mm = 0;
            break;
        }

        switch (cur.type) {
        case CKPT_HDR_HEADER: {
            struct ckpt_hdr_header h;
            if (rec_index != 0) fail("a second HEADER");
            read_struct(&h, sizeof h, "HEADER");
            if (h.magic != CHECKPOINT_MAGIC_HEAD)
                fail("bad header magic %#" PRIx64 " (want %#llx)", h.magic, CHECKPOINT_MAGIC_HEAD);
            if (h.arch_id != ARCH_ID_X86_64) fail("arch_id %" PRIu16 ", want %d (x86_64)", h.arch_id, ARCH_ID_X86_64);
            const struct ckpt_const *c = &h.constants;
            if (c->task_comm_len != TASK_COMM_LEN) fail("task_comm_len %" PRIu16 ", want %d", c->task_comm_len, TASK_COMM_LEN);
            if (want_auxv >= 0 ? c->at_vector_size != want_auxv
                               : (c->at_vector_size == 0 || c->at_vector_size % 2 || c->at_vector_size > 512))
                fail("at_vector_size %" PRIu16 " is not %s", c->at_vector_size,
                     want_auxv >= 0 ? "the one asked for (-A)" : "a plausible saved_auxv size");
            if (c->uts_release_len != UTS_LEN || c->uts_version_len != UTS_LEN || c->uts_machine_len != UTS_LEN)
                fail("uts lengths %" PRIu16 "/%" PRIu16 "/%" PRIu16 ", want %d each", c->uts_release_len,
                     c->uts_version_len, c->uts_machine_len, UTS_LEN);
            /* kzalloc'ed in the seed: the 6 bytes between the constants and time are zero */
            static const unsigned char zero[6];
            if (memcmp((const char *)&h + offsetof(struct ckpt_hdr_header, constants) + sizeof h.constants,
                       zero, offsetof(struct ckpt_hdr_header, time) - offsetof(struct ckpt_hdr_header, constants)
                                 - sizeof h.constants))
                fail("HEADER padding (offsets 34..39) is not zero");
            /* restore_read_header() rejects any uflags */
            if (h.uflags) fail("uflags %#" PRIx64 " is not 0", h.uflags);
            /* checkpoint_write_header(): major/minor/patch are bytes of LINUX_VERSION_CODE */
            if (h.major > 0xff || h.minor > 0xff || h.patch > 0xff)
                fail("kernel version %" PRIu16 ".%" PRIu16 ".%" PRIu16
                     " does not fit LINUX_VERSION_CODE (each part is one byte)", h.major, h.minor, h.patch);
            hdr_version[0] = h.major;
            hdr_version[1] = h.minor;
            hdr_version[2] = h.patch;
            break;
        }
        case CKPT_HDR_BUFFER:
            if (rec_index >= 1 && rec_index <= 3) {
                char uts[UTS_LEN];
                want_len(sizeof(struct ckpt_hdr) + UTS_LEN);
                read_exact(uts, UTS_LEN, "uts BUFFER");
                if (!memchr(uts, 0, UTS_LEN)) fail("uts string is not NUL-terminated within %d bytes", UTS_LEN);
                if (rec_index == 1) check_release(uts);
            } else {
                read_exact(NULL, cur.len - sizeof cur, "BUFFER");
            }
            break;
        case CKPT_HDR_STRING:
            if (want_comm) {
                char comm[TASK_COMM_LEN];
                want_len(sizeof(struct ckpt_hdr) + TASK_COMM_LEN);
                read_exact(comm, TASK_COMM_LEN, "comm STRING");
                if (!memchr(comm, 0, TASK_COMM_LEN)) fail("comm is not NUL-terminated within %d bytes", TASK_COMM_LEN);
                want_comm = 0;
                want_next = CKPT_HDR_THREAD; /* checkpoint_task(): task_struct, then checkpoint_thread() */
            } else {
                read_exact(NULL, cur.len - sizeof cur, "STRING");
            }
            break;
        case CKPT_HDR_OBJREF: {
            struct ckpt_hdr_objref h;
            read_struct(&h, sizeof h, "OBJREF");
            if (h.objref <= 0) fail("objref %" PRId32 " is not positive", h.objref);
            if (objtype_of(h.objref) >= 0) fail("objref %" PRId32 " is not new", h.objref);
            if (h.objtype == CKPT_OBJ_IGNORE || h.objtype >= CKPT_OBJ_MAX)
                fail("objref %" PRId32 " has unknown objtype %" PRIu32, h.objref, h.objtype);
            obj_add(h.objref, h.objtype);
            objrefs++;
            if (h.objtype == CKPT_OBJ_FILE_TABLE || h.objtype == CKPT_OBJ_FILE) pending_obj = (int)h.objtype;
            if (h.objtype == CKPT_OBJ_MM) pending_mms++;
            break;
        }
        case CKPT_HDR_TASK: {
            struct ckpt_hdr_task h;
            if (pending_mms) fail("an mm OBJREF has no MM record");
            read_struct(&h, sizeof h, "TASK");
            tasks++;
            want_comm = 1;
            break;
        }
        case CKPT_HDR_TASK_OBJS: {
            struct ckpt_hdr_task_objs h;
            if (pending_mms) fail("an mm OBJREF has no MM record");
            read_struct(&h, sizeof h, "TASK_OBJS");
            use_ref(h.files_objref, CKPT_OBJ_FILE_TABLE, -2, "files_objref");
            use_ref(h.mm_objref, CKPT_OBJ_MM, -2, "mm_objref");
            want_next = CKPT_HDR_CPU;
            break;
        }
        case CKPT_HDR_FILE_TABLE: {
            struct ckpt_hdr_file_table h;
            if (prev_type != CKPT_HDR_OBJREF) fail("FILE_TABLE without its OBJREF");
            read_struct(&h, sizeof h, "FILE_TABLE");
            if (h.fdt_nfds < 0) fail("negative fdt_nfds %" PRId32, h.fdt_nfds);
            pending_fds = h.fdt_nfds;
            break;
        }
        case CKPT_HDR_FILE_DESC: {
            struct ckpt_hdr_file_desc h;
            read_struct(&h, sizeof h, "FILE_DESC");
            if (pending_fds <= 0) fail("FILE_DESC beyond its FILE_TABLE's fdt_nfds");
            pending_fds--;
            use_ref(h.fd_objref, CKPT_OBJ_FILE, -2, "fd_objref");
            if (h.fd_descriptor < 0) fail("negative fd_descriptor %" PRId32, h.fd_descriptor);
            if (h.fd_close_on_exec > 1) fail("fd_close_on_exec %" PRIu32 " is not 0 or 1", h.fd_close_on_exec);
            break;
        }
        case CKPT_HDR_FILE: {
            struct ckpt_hdr_file h;
            if (prev_type != CKPT_HDR_OBJREF) fail("FILE without its OBJREF");
            read_struct(&h, sizeof h, "FILE");
            if (h._padding) fail("FILE _padding %#" PRIx32 " is not zero", h._padding);
            files++;
            break;
        }
        case CKPT_HDR_MM: {
            struct ckpt_hdr_mm h;
            if (!pending_mms) fail("MM without an OBJREF of type mm before it");
            pending_mms--;
            read_struct(&h, sizeof h, "MM");
            if (h.exe_objref) use_ref(h.exe_objref, CKPT_OBJ_FILE, -2, "exe_objref");
            in_mm = 1;
            mm_vmas_left = h.map_count;
            prev_vma_end = 0;
            break;
        }
        case CKPT_HDR_VMA: {
            read_struct(&vma, sizeof vma, "VMA");
            if (!in_mm || !mm_vmas_left) fail("VMA beyond its MM's map_count");
            mm_vmas_left--;
            if (vma.vm_start % PAGE_SIZE || vma.vm_end % PAGE_SIZE)
                fail("VMA %#" PRIx64 "-%#" PRIx64 " is not page aligned", vma.vm_start, vma.vm_end);
            if (vma.vm_start >= vma.vm_end) fail("empty VMA %#" PRIx64 "-%#" PRIx64, vma.vm_start, vma.vm_end);
            if (vma.vm_start < prev_vma_end)
                fail("VMA %#" PRIx64 " overlaps or precedes the one before (ends %#" PRIx64 ")",
                     vma.vm_start, prev_vma_end);
            prev_vma_end = vma.vm_end;
            /* the seed's types: a private file mapping names its file, vdso and anonymous
             * memory name none; ckptrace's extra types (4..6) may name a file (a shared
             * anonymous segment is a file object too, as the kernel backs it with shmem) */
            if (vma.vma_type == CKPT_VMA_FILE)
                use_ref(vma.vma_objref, CKPT_OBJ_FILE, -2, "vma_objref");
            else if ((vma.vma_type == CKPT_VMA_VDSO || vma.vma_type == CKPT_VMA_ANON) && vma.vma_objref)
                fail("vdso/anonymous VMA %#" PRIx64 " names objref %" PRId32, vma.vm_start, vma.vma_objref);
            else if (vma.vma_objref)
                use_ref(vma.vma_objref, CKPT_OBJ_FILE, -2, "vma_objref");
            /* docs/format.md: vm_page_prot holds PROT_READ|PROT_WRITE|PROT_EXEC, which must agree
             * with VM_READ|VM_WRITE|VM_EXEC (the same bit values) in vm_flags */
            if (vma.vm_page_prot & ~7ULL || vma.vm_page_prot != (vma.vm_flags & 7))
                fail("VMA %#" PRIx64 " vm_page_prot %#" PRIx64 " disagrees with vm_flags %#" PRIx64,
                     vma.vm_start, vma.vm_page_prot, vma.vm_flags);
            vmas++;
            in_vma = 1;
            page_pos = vma.vm_start;
            break;
        }
        case CKPT_HDR_PAGE: {
            struct ckpt_hdr_page h;
            if (cur.len < sizeof h || (cur.len - sizeof h) % PAGE_SIZE)
                fail("PAGE len is not 16 + n*4096");
            memcpy(&h, &cur, sizeof cur);
            read_exact((char *)&h + sizeof cur, sizeof h - sizeof cur, "PAGE");
            uint64_t n = (cur.len - sizeof h) / PAGE_SIZE;
            if (!in_vma) fail("PAGE %#" PRIx64 " outside a VMA", h.vaddr);
            if (h.vaddr == CKPT_VMA_LAST_PAGE) {
                if (n) fail("the closing PAGE (vaddr ~0) carries data");
                in_vma = 0;
                break;
            }
            if (!n) fail("PAGE %#" PRIx64 " without data", h.vaddr);
            if (h.vaddr % PAGE_SIZE) fail("PAGE %#" PRIx64 " is not page aligned", h.vaddr);
            if (h.vaddr < page_pos || h.vaddr >= vma.vm_end || n > (vma.vm_end - h.vaddr) / PAGE_SIZE)
                fail("PAGE %#" PRIx64 "+%" PRIu64 " pages is outside VMA %#" PRIx64 "-%#" PRIx64
                     " or not after the previous page (%#" PRIx64 ")",
                     h.vaddr, n, vma.vm_start, vma.vm_end, page_pos);
            page_pos = h.vaddr + n * PAGE_SIZE;
            pages += n;
            read_exact(NULL, cur.len - sizeof h, "PAGE data");
            break;
        }
        case CKPT_HDR_TAIL: {
            struct ckpt_hdr_tail h;
            if (pending_mms) fail("an mm OBJREF has no MM record");
            read_struct(&h, sizeof h, "TAIL");
            if (h.magic != CHECKPOINT_MAGIC_TAIL)
                fail("bad tail magic %#" PRIx64 " (want %#llx)", h.magic, CHECKPOINT_MAGIC_TAIL);
            unsigned char extra;
            if (read_some(&extra, 1)) {
                rec_index++;
                rec_offset = offset - 1;
                have_cur = 0;
                fail("data after TAIL");
            }
            if (verbose) fflush(stdout);
            printf("records=%" PRIu64 " tasks=%" PRIu64 " vmas=%" PRIu64 " pages=%" PRIu64
                   " files=%" PRIu64 " objrefs=%" PRIu64 "\n",
                   rec_index + 1, tasks, vmas, pages, files, objrefs);
            return 0;
        }
        default:
            /* HEADER_ARCH, THREAD, CPU, FILE_NAME, MM_CONTEXT have arch-dependent or variable
             * bodies the generic header does not define; other types are extensions. */
            read_exact(NULL, cur.len - sizeof cur, "record body");
            break;
        }
        prev_type = cur.type;
    }
}
