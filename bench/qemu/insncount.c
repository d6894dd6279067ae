/*
 * insncount: a QEMU TCG plugin that counts the guest instructions executed, and reports the
 * counts each time the guest executes a marker instruction.
 *
 * Problem: throughput on a shared 2-core host moves by 20 % from run to run, which hides the
 * few per cent one dataplane path costs more than another. Instructions executed in a TCG
 * guest do not depend on the host's load: counting them between two markers, around a transfer
 * of a fixed number of bytes, gives a repeatable cost per byte for each path (bench/ipip_cost.py).
 *
 * Marker: `xchg %rcx,%rcx` (48 87 c9), an architectural no-op nothing else emits. At each one
 * the plugin writes "TORTIE-INSN <insns> <rep_iterations>" to QEMU's log (-d plugin).
 *
 * Counts: TCG runs a rep-prefixed string instruction (rep movsb, the kernel's copy to and from
 * user memory on CPUs with ERMS/FSRM) one iteration per execution of a one-instruction block,
 * so a copy of N bytes would count as ~N instructions. Blocks that start with a rep string
 * instruction are therefore counted apart (rep_iterations), and `insns` holds everything else.
 *
 * Profile (plugin argument profile=on): every translated block also gets a counter of its
 * own, and at each marker the plugin writes "TORTIE-TB <vaddr> <insns>" for every block that
 * ran since the previous marker, then "TORTIE-TB-END": bench/ipip_profile.py maps the
 * addresses to kernel symbols. Blocks are never freed (a retranslated block gets a second
 * counter; the host sums by address).
 *
 * Hazards: the API is declared here, not taken from qemu-plugin.h (Debian ships no plugin
 * headers); the declarations are those of QEMU_PLUGIN_VERSION 1 (QEMU 4.2-8.x). One vCPU:
 * the counters are plain globals bumped by inline TCG ops, exact only with -smp 1.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t qemu_info_t;
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op,
                                              void *ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_outs(const char *string);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t insns;
static uint64_t rep_iterations;

static const uint8_t MARKER[] = {0x48, 0x87, 0xc9};

struct block {
    uint64_t vaddr;
    uint64_t insns; /* bumped by an inline op: the struct never moves */
    uint64_t reported;
};
static bool profile;
static struct block **blocks;
static size_t n_blocks, cap_blocks;

static struct block *new_block(uint64_t vaddr)
{
    if (n_blocks == cap_blocks) {
        cap_blocks = cap_blocks ? 2 * cap_blocks : 65536;
        blocks = realloc(blocks, cap_blocks * sizeof(*blocks));
        if (blocks == NULL) {
            abort();
        }
    }
    struct block *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        abort();
    }
    b->vaddr = vaddr;
    blocks[n_blocks++] = b;
    return b;
}

static void report_blocks(void)
{
    static char chunk[1 << 16];
    size_t used = 0;
    for (size_t i = 0; i < n_blocks; i++) {
        struct block *b = blocks[i];
        if (b->insns == b->reported) {
            continue;
        }
        used += (size_t)snprintf(chunk + used, sizeof(chunk) - used, "TORTIE-TB %llx %llu\n",
                                 (unsigned long long)b->vaddr,
                                 (unsigned long long)(b->insns - b->reported));
        b->reported = b->insns;
        if (used > sizeof(chunk) - 64) {
            qemu_plugin_outs(chunk);
            used = 0;
        }
    }
    if (used) {
        qemu_plugin_outs(chunk);
    }
    qemu_plugin_outs("TORTIE-TB-END\n");
}

static bool is_marker(const struct qemu_plugin_insn *insn)
{
    const uint8_t *code = qemu_plugin_insn_data(insn);
    size_t size = qemu_plugin_insn_size(insn);
    return size == sizeof(MARKER) && code[0] == MARKER[0] && code[1] == MARKER[1] &&
           code[2] == MARKER[2];
}

/* A rep/repne-prefixed string instruction (movs, cmps, stos, lods, scas, ins, outs). */
static bool is_rep_string(const struct qemu_plugin_insn *insn)
{
    const uint8_t *code = qemu_plugin_insn_data(insn);
    size_t size = qemu_plugin_insn_size(insn);
    bool rep = false;
    for (size_t i = 0; i < size; i++) {
        uint8_t b = code[i];
        if (b == 0xf2 || b == 0xf3) {
            rep = true;
        } else if (b == 0x66 || b == 0x67 || b == 0xf0 || b == 0x2e || b == 0x36 || b == 0x3e ||
                   b == 0x26 || b == 0x64 || b == 0x65 || (b >= 0x40 && b <= 0x4f)) {
            continue; /* another prefix, or REX */
        } else {
            return rep && ((b >= 0xa4 && b <= 0xa7) || (b >= 0xaa && b <= 0xaf) ||
                           (b >= 0x6c && b <= 0x6f));
        }
    }
    return false;
}

static void on_marker(unsigned int vcpu_index, void *userdata)
{
    char line[96];
    (void)vcpu_index;
    (void)userdata;
    snprintf(line, sizeof(line), "TORTIE-INSN %llu %llu\n", (unsigned long long)insns,
             (unsigned long long)rep_iterations);
    qemu_plugin_outs(line);
    if (profile) {
        report_blocks();
    }
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    if (n == 0) {
        return;
    }
    if (is_rep_string(qemu_plugin_tb_get_insn(tb, 0))) {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &rep_iterations,
                                                 1);
        if (n > 1) {
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns,
                                                     n - 1);
        }
    } else {
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insns, n);
    }
    if (profile) {
        /* Rep-string blocks' first instruction is left out here too: see the header. */
        uint64_t counted = is_rep_string(qemu_plugin_tb_get_insn(tb, 0)) ? n - 1 : n;
        if (counted) {
            struct block *b = new_block(qemu_plugin_tb_vaddr(tb));
            qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->insns,
                                                     counted);
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        if (is_marker(insn)) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t *info, int argc,
                                                               char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "profile=on") == 0) {
            profile = true;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    return 0;
}
