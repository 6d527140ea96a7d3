//go:build ignore

// SPDX-License-Identifier: GPL-2.0
// Vigil sensors: one object, two backends. The loader keeps the programs of
// the chosen backend (see programs.go):
//   common      tp_btf/sched_process_{exec,fork,exit} and syscall
//               tracepoints for ptrace, process_vm_writev, bpf, module and
//               kexec loads;
//   lsm         lsm/mmap_file, lsm/file_mprotect, lsm/file_open;
//   tracepoint  sys_enter_mmap, sys_enter_mprotect, sys_exit_open*.
// Every event carries a sequence number taken when it is created; an event
// the ring buffer cannot take is counted in lost_events, so holes in the
// numbering and the counter both show loss.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "sensor.h"

char LICENSE[] SEC("license") = "GPL";

// Set by the loader before load.
volatile const __u32 agent_tgid = 0;

// Read by the agent.
__u64 seq_counter = 0;
__u64 lost_events = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); // resized by the loader
} events SEC(".maps");

// One event under construction per CPU. Programs here are not sleepable and
// run with migration disabled; see the README for the preemption caveat.
struct event_buf {
	struct event_hdr h;
	__u8 data[DATA_MAX + SLOT_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_buf);
} scratch SEC(".maps");

// Kernel versions differ in how these are laid out (6.3 moved vm_flags and
// vm_start into anonymous unions); CO-RE finds the members by name.
struct vm_area_struct___v {
	unsigned long vm_start;
	unsigned long vm_end;
	unsigned long vm_flags;
	struct file *vm_file;
} __attribute__((preserve_access_index));

// Syscall tracepoint contexts: a stable layout (see the tracepoints'
// format files), declared here without CO-RE so the verifier sees plain
// context loads.
struct sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct sys_exit_ctx {
	__u64 common;
	long id;
	long ret;
};

#define FMODE_WRITE 0x2
#define PROT_EXEC 0x4
#define MAP_ANONYMOUS 0x20
#define VM_EXEC 0x4
#define S_IFMT 00170000
#define S_IFCHR 0020000
#define PROC_SUPER_MAGIC 0x9fa0
#define MINORBITS 20
#define MKDEV(ma, mi) (((ma) << MINORBITS) | (mi))

#define PTRACE_POKETEXT 4
#define PTRACE_POKEDATA 5
#define PTRACE_POKEUSR 6
#define PTRACE_SETREGS 13
#define PTRACE_SETFPREGS 15
#define PTRACE_ATTACH 16
#define PTRACE_SETREGSET 0x4205
#define PTRACE_SEIZE 0x4206

static __always_inline int is_agent(void)
{
	return agent_tgid && (bpf_get_current_pid_tgid() >> 32) == agent_tgid;
}

// new_event returns the per-CPU buffer with the header filled for the
// current task, or NULL.
static __always_inline struct event_buf *new_event(__u32 kind, __u32 hook)
{
	__u32 zero = 0;
	struct event_buf *b = bpf_map_lookup_elem(&scratch, &zero);
	if (!b)
		return NULL;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct event_hdr *h = &b->h;
	__builtin_memset(h, 0, sizeof(*h));
	h->seq = __sync_fetch_and_add(&seq_counter, 1) + 1;
	h->ktime = bpf_ktime_get_boot_ns();
	h->kind = kind;
	h->hook = hook;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	h->pid = pid_tgid >> 32;
	h->tid = (__u32)pid_tgid;
	h->ppid = BPF_CORE_READ(task, real_parent, tgid);
	h->uid = BPF_CORE_READ(task, cred, uid.val);
	h->euid = BPF_CORE_READ(task, cred, euid.val);
	h->gid = BPF_CORE_READ(task, cred, gid.val);
	h->start_time = BPF_CORE_READ(task, group_leader, start_boottime);
	h->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(h->comm, sizeof(h->comm));
	return b;
}

static __always_inline void submit(struct event_buf *b, __u32 len)
{
	if (len > DATA_MAX)
		len = DATA_MAX;
	b->h.data_len = len;
	if (bpf_ringbuf_output(&events, b, sizeof(b->h) + len, 0) < 0)
		__sync_fetch_and_add(&lost_events, 1);
}

// put_str copies a NUL-terminated kernel string into the data area at off
// and returns the new offset. slot is one of the STR_* indexes.
static __always_inline __u32 put_kstr(struct event_buf *b, __u32 off, int slot, const char *s)
{
	long n = bpf_probe_read_kernel_str(&b->data[off & (DATA_MAX - 1)], SLOT_MAX, s);
	if (n <= 0)
		return off;
	b->h.str_off[slot & (NSTR - 1)] = off;
	b->h.str_len[slot & (NSTR - 1)] = n;
	return off + n;
}

// path_walk is the state of one put_path walk, one step per bpf_loop
// iteration (so the verifier checks a step once, not PATH_DEPTH times).
struct path_walk {
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *dentry;
	__u32 off;
	int done;
};

static long path_step(__u32 i, void *data)
{
	struct path_walk *w = data;
	__u32 zero = 0;
	struct event_buf *b = bpf_map_lookup_elem(&scratch, &zero);
	if (!b)
		return 1;

	// Plain locals: BPF_CORE_READ would make w-> itself a relocation.
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (dentry != mnt_root || mnt_parent == mnt) {
			w->done = 1; // reached the root of the mount tree
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = __builtin_preserve_access_index(&mnt_parent->mnt);
		return 0;
	}
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	long n = bpf_probe_read_kernel_str(&b->data[w->off & (DATA_MAX - 1)], NAME_MAX_BUF, name);
	if (n <= 0)
		return 1;
	w->off += n;
	if (w->off >= DATA_MAX - NAME_MAX_BUF)
		return 1;
	w->dentry = parent;
	return 0;
}

// put_path writes the path of (mnt, dentry) into the data area as its
// components, leaf first, each NUL-terminated; the agent reverses them.
// Walking up crosses mount points through struct mount. A path deeper than
// PATH_DEPTH components is cut at the top and flagged.
static __always_inline __u32 put_path(struct event_buf *b, __u32 off, int slot,
				      struct vfsmount *vfsmnt, struct dentry *dentry)
{
	struct path_walk w = {
		.vfsmnt = vfsmnt,
		.mnt = container_of(vfsmnt, struct mount, mnt),
		.dentry = dentry,
		.off = off,
	};
	bpf_loop(PATH_DEPTH, path_step, &w, 0);
	if (!w.done)
		b->h.flags |= 1 << (FLAG_PATH0_TRUNC + (slot & (NSTR - 1)));
	b->h.str_off[slot & (NSTR - 1)] = off;
	b->h.str_len[slot & (NSTR - 1)] = w.off - off;
	return w.off;
}

static __always_inline __u32 put_file(struct event_buf *b, __u32 off, int slot, struct file *file)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	if (slot == STR_PATH) {
		b->h.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		b->h.ino = BPF_CORE_READ(inode, i_ino);
	} else {
		b->h.dev2 = BPF_CORE_READ(inode, i_sb, s_dev);
		b->h.ino2 = BPF_CORE_READ(inode, i_ino);
	}
	return put_path(b, off, slot, BPF_CORE_READ(file, f_path.mnt), BPF_CORE_READ(file, f_path.dentry));
}

static __always_inline struct file *fd_file(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = NULL;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

// ------------------------------------------------------------- processes

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_EXEC, HOOK_SCHED_EXEC);
	if (!b)
		return 0;
	__u32 off = 0;
	off = put_file(b, off, STR_PATH, BPF_CORE_READ(bprm, file));
	off = put_kstr(b, off, STR_NAME, BPF_CORE_READ(bprm, filename));

	struct fs_struct *fs = BPF_CORE_READ(p, fs);
	off = put_path(b, off, STR_PATH2, BPF_CORE_READ(fs, pwd.mnt), BPF_CORE_READ(fs, pwd.dentry));

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 len = arg_end - arg_start;
	off &= DATA_MAX - 1;
	if (len > DATA_MAX - off) {
		len = DATA_MAX - off;
		b->h.flags |= 1 << FLAG_ARGV_TRUNC;
	}
	if (len > ARGV_MAX) {
		len = ARGV_MAX;
		b->h.flags |= 1 << FLAG_ARGV_TRUNC;
	}
	if (len && bpf_probe_read_user(&b->data[off], len, (void *)arg_start) == 0) {
		b->h.str_off[STR_ARGV] = off;
		b->h.str_len[STR_ARGV] = len;
		off += len;
	}
	submit(b, off);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0; // a new thread, not a new process
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_FORK, HOOK_SCHED_FORK);
	if (!b)
		return 0;
	b->h.arg0 = BPF_CORE_READ(child, tgid);
	b->h.arg1 = BPF_CORE_READ(child, start_boottime);
	submit(b, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p)
{
	// Report the process once, when its last thread exits.
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0;
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_EXIT, HOOK_SCHED_EXIT);
	if (!b)
		return 0;
	__u32 code = BPF_CORE_READ(p, exit_code);
	if (BPF_CORE_READ(p, signal, flags) & 0x4 /* SIGNAL_GROUP_EXIT */)
		code = BPF_CORE_READ(p, signal, group_exit_code);
	b->h.arg0 = code;
	submit(b, 0);
	return 0;
}

// ------------------------------------------------------ executable memory

static __always_inline void mmap_event(__u32 hook, struct file *file, __u64 addr, __u64 len,
				       __u64 prot, __u64 flags)
{
	struct event_buf *b = new_event(file ? KIND_IMAGE : KIND_MEMEXEC, hook);
	if (!b)
		return;
	b->h.op = OP_MMAP;
	b->h.arg0 = addr;
	b->h.arg1 = len;
	b->h.arg2 = prot;
	b->h.arg3 = flags;
	__u32 off = 0;
	if (file)
		off = put_file(b, off, STR_PATH, file);
	else
		b->h.flags |= 1 << FLAG_ANON;
	submit(b, off);
}

static __always_inline void mprotect_event(__u32 hook, struct vm_area_struct___v *vma, __u64 addr,
					   __u64 len, __u64 prot)
{
	struct event_buf *b = new_event(KIND_MEMEXEC, hook);
	if (!b)
		return;
	b->h.op = OP_MPROTECT;
	b->h.arg0 = addr;
	b->h.arg1 = len;
	b->h.arg2 = prot;
	__u32 off = 0;
	struct file *file = vma ? BPF_CORE_READ(vma, vm_file) : NULL;
	if (file)
		off = put_file(b, off, STR_PATH, file);
	else if (vma)
		b->h.flags |= 1 << FLAG_ANON;
	submit(b, off);
}

SEC("lsm/mmap_file")
int BPF_PROG(lsm_mmap_file, struct file *file, unsigned long reqprot, unsigned long prot,
	     unsigned long flags)
{
	if (!(prot & PROT_EXEC) || is_agent())
		return 0;
	mmap_event(HOOK_LSM_MMAP_FILE, file, 0, 0, prot, flags);
	return 0;
}

SEC("lsm/file_mprotect")
int BPF_PROG(lsm_file_mprotect, struct vm_area_struct *vma_, unsigned long reqprot,
	     unsigned long prot)
{
	struct vm_area_struct___v *vma = (void *)vma_;
	if (!(prot & PROT_EXEC) || (BPF_CORE_READ(vma, vm_flags) & VM_EXEC) || is_agent())
		return 0;
	__u64 start = BPF_CORE_READ(vma, vm_start);
	mprotect_event(HOOK_LSM_FILE_MPROTECT, vma, start, BPF_CORE_READ(vma, vm_end) - start, prot);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int tp_sys_enter_mmap(struct sys_enter_ctx *ctx)
{
	__u64 prot = ctx->args[2], flags = ctx->args[3];
	if (!(prot & PROT_EXEC) || is_agent())
		return 0;
	struct file *file = NULL;
	if (!(flags & MAP_ANONYMOUS)) {
		file = fd_file(ctx->args[4]);
		if (!file)
			return 0; // bad fd: the mmap fails
	}
	mmap_event(HOOK_TP_MMAP, file, ctx->args[0], ctx->args[1], prot, flags);
	return 0;
}

struct vma_info {
	__u64 addr;
	struct vm_area_struct___v *vma;
	__u64 flags;
};

static long find_vma_cb(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct vma_info *info = data;
	struct vm_area_struct___v *v = (void *)vma;
	info->vma = v;
	info->flags = BPF_CORE_READ(v, vm_flags);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mprotect")
int tp_sys_enter_mprotect(struct sys_enter_ctx *ctx)
{
	__u64 prot = ctx->args[2];
	if (!(prot & PROT_EXEC) || is_agent())
		return 0;
	struct vma_info info = {.addr = ctx->args[0]};
	struct task_struct *task = bpf_get_current_task_btf();
	bpf_find_vma(task, info.addr, find_vma_cb, &info, 0);
	if (info.vma && (info.flags & VM_EXEC))
		return 0; // already executable: nothing is added
	mprotect_event(HOOK_TP_MPROTECT, info.vma, ctx->args[0], ctx->args[1], prot);
	return 0;
}

// ------------------------------------------------------------ file opens

// open_event reports opens that read or change kernel memory, or write
// another process's memory: /proc/PID/mem for write, /dev/mem, /dev/kmem,
// /dev/port, /proc/kcore.
static __always_inline void open_event(__u32 hook, struct file *file)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	__u32 mode = BPF_CORE_READ(inode, i_mode);
	__u32 kind = 0, op = 0;

	if ((mode & S_IFMT) == S_IFCHR) {
		__u32 rdev = BPF_CORE_READ(inode, i_rdev);
		if (rdev == MKDEV(1, 1) || rdev == MKDEV(1, 2) || rdev == MKDEV(1, 4)) {
			kind = KIND_KERNEL;
			op = OP_DEV_MEM;
		}
	} else if (BPF_CORE_READ(inode, i_sb, s_magic) == PROC_SUPER_MAGIC) {
		char name[8] = {};
		bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(file, f_path.dentry, d_name.name));
		if (name[0] == 'm' && name[1] == 'e' && name[2] == 'm' && name[3] == 0 &&
		    (BPF_CORE_READ(file, f_mode) & FMODE_WRITE)) {
			kind = KIND_INJECT;
			op = OP_PROC_MEM;
		} else if (name[0] == 'k' && name[1] == 'c' && name[2] == 'o' && name[3] == 'r' &&
			   name[4] == 'e' && name[5] == 0) {
			kind = KIND_KERNEL;
			op = OP_KCORE;
		}
	}
	if (!kind)
		return;
	struct event_buf *b = new_event(kind, hook);
	if (!b)
		return;
	b->h.op = op;
	b->h.arg0 = BPF_CORE_READ(file, f_mode);
	submit(b, put_file(b, 0, STR_PATH, file));
}

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, struct file *file)
{
	if (!is_agent())
		open_event(HOOK_LSM_FILE_OPEN, file);
	return 0;
}

static __always_inline int on_open_exit(struct sys_exit_ctx *ctx, __u32 hook)
{
	long ret = ctx->ret;
	if (ret < 0 || is_agent())
		return 0;
	struct file *file = fd_file(ret);
	if (file)
		open_event(hook, file);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int tp_sys_exit_openat(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx, HOOK_TP_OPENAT);
}

SEC("tracepoint/syscalls/sys_exit_openat2")
int tp_sys_exit_openat2(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx, HOOK_TP_OPENAT2);
}

SEC("tracepoint/syscalls/sys_exit_open")
int tp_sys_exit_open(struct sys_exit_ctx *ctx)
{
	return on_open_exit(ctx, HOOK_TP_OPEN);
}

// ---------------------------------------------------------- code injection

SEC("tracepoint/syscalls/sys_enter_ptrace")
int tp_sys_enter_ptrace(struct sys_enter_ctx *ctx)
{
	__u64 req = ctx->args[0];
	__u32 op;
	switch (req) {
	case PTRACE_ATTACH:
		op = OP_PTRACE_ATTACH;
		break;
	case PTRACE_SEIZE:
		op = OP_PTRACE_SEIZE;
		break;
	case PTRACE_POKETEXT:
	case PTRACE_POKEDATA:
	case PTRACE_POKEUSR:
		op = OP_PTRACE_POKE;
		break;
	case PTRACE_SETREGS:
	case PTRACE_SETFPREGS:
	case PTRACE_SETREGSET:
		op = OP_PTRACE_SETREGS;
		break;
	default:
		return 0;
	}
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_INJECT, HOOK_TP_PTRACE);
	if (!b)
		return 0;
	b->h.op = op;
	b->h.arg0 = ctx->args[1]; // target pid
	b->h.arg1 = req;
	submit(b, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_process_vm_writev")
int tp_sys_enter_process_vm_writev(struct sys_enter_ctx *ctx)
{
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_INJECT, HOOK_TP_VM_WRITEV);
	if (!b)
		return 0;
	b->h.op = OP_VM_WRITEV;
	b->h.arg0 = ctx->args[0];
	submit(b, 0);
	return 0;
}

// ------------------------------------------------------- kernel tampering

SEC("tracepoint/syscalls/sys_enter_bpf")
int tp_sys_enter_bpf(struct sys_enter_ctx *ctx)
{
	if (ctx->args[0] != BPF_PROG_LOAD || is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_KERNEL, HOOK_TP_BPF);
	if (!b)
		return 0;
	b->h.op = OP_BPF_PROG_LOAD;
	union bpf_attr *attr = (void *)ctx->args[1];
	__u32 prog_type = 0;
	bpf_probe_read_user(&prog_type, sizeof(prog_type), &attr->prog_type);
	b->h.arg0 = prog_type;
	__u32 off = 0;
	long n = bpf_probe_read_user_str(&b->data[0], 16, attr->prog_name);
	if (n > 0) {
		b->h.str_off[STR_NAME] = 0;
		b->h.str_len[STR_NAME] = n;
		off = n;
	}
	submit(b, off);
	return 0;
}

static __always_inline int kernel_file_event(__u32 hook, __u32 op, long fd)
{
	if (is_agent())
		return 0;
	struct event_buf *b = new_event(KIND_KERNEL, hook);
	if (!b)
		return 0;
	b->h.op = op;
	__u32 off = 0;
	struct file *file = fd >= 0 ? fd_file(fd) : NULL;
	if (file)
		off = put_file(b, off, STR_PATH, file);
	submit(b, off);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_init_module")
int tp_sys_enter_init_module(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_INIT_MODULE, OP_MODULE_LOAD, -1);
}

SEC("tracepoint/syscalls/sys_enter_finit_module")
int tp_sys_enter_finit_module(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_FINIT_MODULE, OP_MODULE_LOAD, ctx->args[0]);
}

SEC("tracepoint/syscalls/sys_enter_kexec_load")
int tp_sys_enter_kexec_load(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_KEXEC_LOAD, OP_KEXEC_LOAD, -1);
}

SEC("tracepoint/syscalls/sys_enter_kexec_file_load")
int tp_sys_enter_kexec_file_load(struct sys_enter_ctx *ctx)
{
	return kernel_file_event(HOOK_TP_KEXEC_FILE_LOAD, OP_KEXEC_LOAD, ctx->args[0]);
}
